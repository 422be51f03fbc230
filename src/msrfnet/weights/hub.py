"""The Hugging Face Hub folder layout: ``config.json``, ``model.safetensors`` and a ``README.md``
model card, as ``save_pretrained`` writes it and ``from_pretrained`` / ``--weights DIR`` read it.

``model.safetensors`` is our weights file (:func:`~msrfnet.weights.checkpoint.save_weights`, the
config in its metadata), so the folder loads like any checkpoint; ``config.json`` repeats the
config for people and the Hub. Loading a Hub *id* needs the network: download the folder with
``huggingface_hub.snapshot_download(id)`` and pass the folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from msrfnet.config import Config
from msrfnet.errors import MSRFError
from msrfnet.safe_output import io_error
from msrfnet.version import __version__
from msrfnet.weights.checkpoint import HUB_WEIGHTS, save_weights

__all__ = ["save_pretrained", "HUB_CONFIG", "HUB_WEIGHTS"]

HUB_CONFIG = "config.json"
_CARD = """---
library_name: msrfnet
license: mit
tags: [image-segmentation, biomedical, msrf-net]
---
# MSRF-Net ({variant}, {num_classes} class)

MSRF-Net (Srivastava et al., IEEE JBHI 2022, arXiv 2105.07451) saved by msrfnet {version}.
Input: RGB resized to {size}×{size} (Lanczos), scaled to [0, 1], and its Canny map (thresholds
{low:g}, {high:g}); output: sigmoid probability, threshold {threshold:g}.

```python
import msrfnet
seg = msrfnet.Segmenter.from_pretrained("this-folder")
mask = seg("image.png").mask
```
{metrics}"""


def save_pretrained(
    model: torch.nn.Module,
    directory: str | Path,
    config: Config,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``directory`` with the three files, built in a temporary folder and renamed into
    place; an existing ``directory`` is replaced only with ``overwrite`` and only if it is such
    a folder (it holds our ``config.json``)."""
    directory = Path(directory)
    if directory.exists():
        ours = (directory / HUB_CONFIG).is_file() and "msrfnet_version" in (
            directory / HUB_CONFIG
        ).read_text(errors="replace")
        if not (overwrite and ours):
            why = "use overwrite=True" if ours else "not a save_pretrained folder; choose another"
            raise MSRFError(f"{directory}: already exists ({why})")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp")
        )
    except OSError as e:
        raise io_error(directory.parent, e) from e
    try:
        save_weights(tmp / HUB_WEIGHTS, model, config, metrics)
        record = {
            "architecture": "MSRFNet",
            "msrfnet_version": __version__,
            "variant": getattr(model, "variant", config.variant),
            "num_classes": getattr(model, "num_classes", config.num_classes),
            "in_channels": getattr(model, "in_channels", config.in_channels),
            "config": config.to_dict(),
            "metrics": metrics or {},
        }
        (tmp / HUB_CONFIG).write_text(json.dumps(record, indent=1))
        lines = "".join(f"\n- {k}: {v}" for k, v in (metrics or {}).items())
        (tmp / "README.md").write_text(
            _CARD.format(
                variant=record["variant"],
                num_classes=record["num_classes"],
                version=__version__,
                size=config.image_size,
                low=config.canny_low,
                high=config.canny_high,
                threshold=config.threshold,
                metrics=f"\n## Metrics\n{lines}\n" if lines else "",
            )
        )
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise io_error(directory, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
