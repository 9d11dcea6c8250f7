"""The ``graphopt`` command line: one module per verb (apply, diff, bisect, eval, data, export, ...), recipes,
reports and plots. Builds on ``graphopt.core`` and ``graphopt.ascend``; nothing below imports it."""
