"""Small synthetic data sets for the data tests (import as ``from _data_helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def blob_pair(h: int = 40, w: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image with bright discs on a dark noisy background, and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(3):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, max(4, min(h, w) // 4))
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    mask[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = True  # never empty
    image = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    image[mask] = rng.integers(180, 255, (int(mask.sum()), 3)).astype(np.uint8)
    return image, np.where(mask, 255, 0).astype(np.uint8)


def save(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_dataset(
    root: Path,
    counts: dict[str, int] | None = None,
    *,
    size: tuple[int, int] = (40, 48),
    image_ext: str = ".png",
    mask_ext: str = ".png",
) -> Path:
    """A valid data set ``root/{train,val,test}/{images,masks}`` of blob images."""
    counts = counts or {"train": 6, "val": 2, "test": 2}
    seed = 0
    for split, n in counts.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = blob_pair(*size, seed=seed)
            seed += 1
            save(root / split / "images" / f"s{i:03d}{image_ext}", image)
            save(root / split / "masks" / f"s{i:03d}{mask_ext}", mask)
    return root
