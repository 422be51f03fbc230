"""msrfnet: MSRF-Net (Srivastava et al., IEEE JBHI 2022, arXiv 2105.07451) in PyTorch.

Heavy imports (torch) happen on first use of a name, so ``msrf --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msrfnet.errors import MSRFError  # noqa: E402
from msrfnet.version import __version__  # noqa: E402

__all__ = [
    "MSRFNet",
    "MSRFOutput",
    "MSRFError",
    "Config",
    "from_keras",
    "predict_proba",
    "Segmenter",
    "Segmentation",
    "canny",
    "__version__",
]

_LAZY = {
    "MSRFNet": "msrfnet.model",
    "MSRFOutput": "msrfnet.model",
    "predict_proba": "msrfnet.model",
    "from_keras": "msrfnet.model.keras",
    "Config": "msrfnet.config",
    "Segmenter": "msrfnet.inference.segmenter",
    "Segmentation": "msrfnet.inference.segmenter",
    "canny": "msrfnet.model.canny",
}

if TYPE_CHECKING:  # pragma: no cover
    from msrfnet.config import Config
    from msrfnet.model import MSRFNet, MSRFOutput, predict_proba
    from msrfnet.model.keras import from_keras


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msrfnet' has no attribute {name!r}")
