"""One typed configuration for a run: the only way options travel from the CLI to the code.

It is saved as ``config.yaml`` in every run directory and inside every checkpoint, so a run can be
repeated and a checkpoint knows how it was made. Defaults are the original recipe (spec §2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Config:
    # data
    data: str | None = None  # dataset root with train/ val/ test/; None → ./data/kdsb or the bundled sample
    image_size: int = 256  # the original resizes every image to 256×256 (Lanczos)
    canny_low: int = 10  # Canny thresholds of the image-gradient input (original: 10, 1000)
    canny_high: int = 1000
    edge_canny_low: int = 10  # Canny thresholds of the edge target (original: 10, 1000)
    edge_canny_high: int = 1000
    mask_threshold: float | None = None  # needed for label-map masks; None = binarise at half range
    augment: bool = False  # the original uses no augmentation
    cache_dir: str | None = None  # default: <data>/.msrf_cache (or ~/.cache/msrfnet if read-only)
    # model
    variant: str = "official"  # "official" (the Keras graph) or "clean" (Fig. 2a)
    in_channels: int = 3
    num_classes: int = 1
    # optimisation (original: Adam 1e-4, batch 4, 125 epochs, constant LR)
    epochs: int = 125
    max_minutes: float | None = None  # stop after this much training time (the best epoch is kept)
    batch_size: int = 4
    lr: float = 1e-4
    schedule: str = "constant"  # "constant" (original) or "cosine"
    seed: int = 42
    deterministic: bool = False
    # execution
    precision: str = "auto"  # "auto" = bf16-mixed on a GPU, 32 on a CPU
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    workers: int = 2
    compile: bool = False
    channels_last: bool = True
    subpixel: bool = True  # DSDF up-convs as conv + pixel shuffle (exact, msrfnet/speed.py)
    # evaluation
    threshold: float = 0.5
    # output
    out: str = "runs"
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})
