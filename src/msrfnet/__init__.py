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
    "finetune",
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
    from msrfnet.inference.segmenter import Segmenter
    from msrfnet.model import MSRFNet, MSRFOutput, predict_proba
    from msrfnet.model.keras import from_keras


def finetune(images, masks=None, weights="shipped", **options: Any) -> "Segmenter":
    """Fine-tune ``weights`` (``"shipped"``: the bundled nuclei weights; a run folder, a
    ``.safetensors``/``.ckpt`` file or a Hub folder) on your own images, and return a
    :class:`Segmenter` of the best weights (``Segmenter.open(run folder)``).

    ``images``: a list of arrays and/or image files with ``masks`` the list of their masks (0/255,
    0/1, bool or 16-bit instance label images); or a folder of images with ``masks`` a folder of
    masks (paired by file stem), or one folder holding ``images/`` and ``masks/``; or a dataset
    folder with ``train/`` and ``val/`` (used as it is). ``val=(images, masks)`` names the
    validation pairs, else ``val_fraction`` (0.2) of them are held apart, seeded. Every other
    option is a ``msrf train`` option by its config name (``epochs=``, ``lr=``, ``out=``,
    ``name=``, ``freeze="encoder"``, ...); the fine-tune defaults apply where none is given.

    It runs what ``msrf train --data D --weights W`` runs and writes a normal run folder under
    ``out`` (default ``./runs``); images that are not a dataset folder are copied into msrfnet's
    cache folder first, never among your files, and ``weights`` are only read
    (docs/FINETUNE.md). Raises :class:`MSRFError` with one line for a problem in the inputs."""
    from msrfnet.inference.segmenter import Segmenter
    from msrfnet.train.finetune import finetune_run

    return Segmenter.open(finetune_run(images, masks, weights, **options))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msrfnet' has no attribute {name!r}")
