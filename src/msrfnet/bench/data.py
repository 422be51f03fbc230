"""Data-pipeline throughput: how many training images per second the real training loader delivers.

``msrf bench --data DIR`` measures it beside the model, so that one JSON object says whether the
loader keeps up with training (``data_img_s`` against ``train_img_s``). The loader is the one
``msrf train`` builds (``MSRFDataModule``: the uint8 cache, per-sample Canny maps and edge targets,
optional augmentation, pinned memory on a CUDA machine, persistent workers); the cache is built or
loaded first and the first epoch, which starts the worker processes, is not timed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from msrfnet.config import Config
from msrfnet.data import MSRFDataModule

__all__ = ["data_throughput"]


def data_throughput(
    data: str | Path | None = None,
    image_size: int = 256,
    batch_size: int = 32,
    workers: int = 2,
    augment: bool = False,
    epochs: int = 2,
) -> dict[str, Any]:
    """Images per second over ``epochs`` timed passes of the training loader (after one untimed).

    Raises:
        MSRFError: as ``msrf train`` for a missing or unusable dataset.
    """

    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    cfg = Config(
        data=str(data) if data is not None else None,
        image_size=image_size,
        batch_size=batch_size,
        workers=workers,
        augment=augment,
    )
    dm = MSRFDataModule(cfg)
    dm.setup("fit")  # cache built or loaded here, not timed
    loader = dm.train_dataloader()
    for _ in loader:  # starts the persistent workers
        pass
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["image"])
    seconds = time.perf_counter() - t0
    return {
        "data_img_s": n / seconds,
        "data_images": n,
        "data_seconds": seconds,
        "data_workers": workers,
        "data_batch_size": batch_size,
        "data_augment": augment,
        "data_root": str(dm.root),
    }
