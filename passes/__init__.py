"""Built-in passes, one module per pass, each named after the pass it registers on import
(``graphopt.core.pass_infra`` imports the one a recipe names, or all of them to list them)."""
