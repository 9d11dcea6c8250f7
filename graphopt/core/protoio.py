"""Names that moved: the wire format is ``wire``, the conversions between forms ``forms``, checking ``onnx_files``."""
from __future__ import annotations

from .wire import SplitModel  # noqa: F401 - re-export for the import sweep
from .forms import graph_from_split  # noqa: F401 - re-export for the import sweep
from .forms import split_graph  # noqa: F401 - re-export for the import sweep
from .forms import split_model  # noqa: F401 - re-export for the import sweep
from .forms import weights_as_inputs  # noqa: F401 - re-export for the import sweep
from .onnx_files import check_split  # noqa: F401 - re-export for the import sweep
