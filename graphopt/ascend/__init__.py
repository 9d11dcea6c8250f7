"""The hand-off to Huawei Ascend: ATC jobs and their config files, ONNX -> Ascend op names, the backends that
compile and run (ATC + ais_bench, or onnxruntime standing in), fp16 emulation and the precision search.
Builds on ``graphopt.core``; never imports ``graphopt.commands``."""
