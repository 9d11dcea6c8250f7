"""The framework: the model and its graph view, shape inference, the pass infrastructure and rewrite rules,
the pipeline and numeric verification. Nothing here knows about Ascend, files a command writes, or the CLI."""
