"""The tests mirror the package (tests/model, tests/data, … like src/msrfnet/model, …); the
shared helpers (``_shared``, ``_model_helpers``, ``_model_tester``, …) stay here, importable from
every sub-folder."""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
