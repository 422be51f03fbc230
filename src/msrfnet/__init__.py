"""msrfnet: MSRF-Net (Srivastava et al., IEEE JBHI 2022, arXiv 2105.07451) in PyTorch.

Heavy imports (torch) happen on first use of a name, so ``msrf --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import MSRFError  # noqa: E402

__all__ = ["MSRFNet", "MSRFOutput", "MSRFError", "Config", "from_keras", "predict_proba", "__version__"]

_LAZY = {
    "MSRFNet": "msrfnet.model",
    "MSRFOutput": "msrfnet.model",
    "predict_proba": "msrfnet.model",
    "from_keras": "msrfnet.keras_import",
    "Config": "msrfnet.config",
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .keras_import import from_keras
    from .model import MSRFNet, MSRFOutput, predict_proba


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msrfnet' has no attribute {name!r}")
