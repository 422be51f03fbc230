"""A handful of real images (from the bundled kdsb sample) as a small dataset for training tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from msrfnet.data import sample_root


def real_subset(root: Path, counts: dict[str, int] | None = None) -> Path:
    """Copy the first ``counts[split]`` image/mask pairs of each split of the bundled sample."""
    counts = counts or {"train": 4, "val": 3, "test": 2}
    src = sample_root()
    for split, n in counts.items():
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for image in sorted((src / split / "images").iterdir())[:n]:
            shutil.copy(image, root / split / "images" / image.name)
            shutil.copy(src / split / "masks" / image.name, root / split / "masks" / image.name)
    return root


def train_args(
    data: Path, out: Path, name: str, *extra: str, epochs: int = 2, size: int = 32
) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--name",
        name,
        "--epochs",
        str(epochs),
        "--image-size",
        str(size),
        "--batch-size",
        "2",
        "--workers",
        "0",
        *extra,
    ]
