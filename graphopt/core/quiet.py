"""What the libraries graphopt drives may print: nothing of their own by default, everything with ``-v``.

graphopt reports in its own lines (progress, and one ``graphopt: error: ...`` line for a failure, which already
carries the library's message). Left alone, onnxruntime logs an error twice, once as a colour-coded C++ log line
before graphopt's, and onnx-graphsurgeon, onnx, onnxsim and torch add warnings of their own. ``quiet_libraries``
silences them for the process; every onnxruntime session graphopt builds takes its level from
``ort_log_severity()``, since a session's own level overrides the default logger's.
"""
from __future__ import annotations

import logging
import os
import warnings

__all__ = ["ort_log_severity", "quiet_libraries", "verbose"]

# onnxruntime's severities: 0 verbose, 1 info, 2 warning (its default), 3 error, 4 fatal.
_QUIET, _VERBOSE = 4, 2
_verbose = False


def verbose() -> bool:
    """Whether the command line asked for the libraries' own output (``-v``)."""
    return _verbose


def ort_log_severity() -> int:
    """``SessionOptions.log_severity_level`` for every session graphopt builds: fatal only (an error reaches the
    user as graphopt's one-line message) unless ``-v``."""
    return _VERBOSE if _verbose else _QUIET


def quiet_libraries(verbose: bool = False) -> None:
    """Silence (or, ``verbose``, leave at their defaults) the libraries' own log lines and warnings for this
    process and the Python processes it starts: onnxruntime's C++ log lines, onnx-graphsurgeon's logger, Python
    warnings (onnx, onnxsim, torch), torch's loggers and its C++ warnings."""
    global _verbose
    _verbose = verbose
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    if verbose:
        ort.set_default_logger_severity(_VERBOSE)
        return
    ort.set_default_logger_severity(_QUIET)  # sessions built without a level of their own (onnxsim's)
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    # Read when torch is imported (later, and by spawned workers), and by child Python processes.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.simplefilter("ignore")
    for name in ("torch", "torch.onnx", "torch._dynamo", "onnxscript", "onnx_ir", "onnxsim", "onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
