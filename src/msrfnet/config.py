"""One typed configuration for a run: the only way options travel from the CLI to the code.

It is saved as ``config.yaml`` in every run directory and inside every checkpoint, so a run can be
repeated and a checkpoint knows how it was made. Defaults are the original recipe (spec §2).
"""

from __future__ import annotations

import dataclasses
from argparse import ArgumentTypeError
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msrfnet import options as opt
from msrfnet.errors import MSRFError

__all__ = [
    "VARIANTS",
    "NORMALIZATIONS",
    "SCHEDULES",
    "PRECISE_BN",
    "PRECISIONS",
    "INFERENCE_FIELDS",
    "RESUME_CHANGEABLE",
    "Config",
    "check_resume_changes",
]

VARIANTS = ("official", "clean")  # the model's wirings (msrfnet.model.MSRFNet)
#: How 16-bit and float images become 0–255 (msrfnet.data.io.to_uint8; uint8 images stay as they
#: are): "minmax" stretches each image's own range, "percentile" its 1–99.8 % range (clipped).
NORMALIZATIONS = ("minmax", "percentile")
SCHEDULES = ("constant", "cosine")
PRECISE_BN = (
    "auto",
    "on",
    "off",
)  # when BN statistics are recomputed (msrfnet/train/precise_bn.py)
PRECISIONS = (
    "auto",
    "32-true",
    "32",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "64",
)

#: The fields that inference reads from a checkpoint's config (checked when weights are read).
INFERENCE_FIELDS = (
    "variant",
    "in_channels",
    "num_classes",
    "image_size",
    "canny_low",
    "canny_high",
    "mask_threshold",
    "threshold",
    "normalize",
    "patch_size",
    "scale",
)

#: What a resumed run (``msrf train --resume RUN``) may change: how it runs and for how long. The
#: rest would change the weights' shapes, the data or recipe it learns from, or would be silently
#: ignored (the optimizer's saved learning rate, the saved random state), so it is refused.
RESUME_CHANGEABLE = frozenset(
    {
        "epochs",
        "max_minutes",
        "batch_size",
        "workers",
        "devices",
        "strategy",
        "num_nodes",
        "precision",
        "compile",
        "channels_last",
        "subpixel",
        "deterministic",
        "cache_dir",
        "precise_bn",
    }
)


@dataclass
class Config:
    # data
    data: str | None = (
        None  # dataset root with train/ val/ test/; None → ./data/kdsb or the bundled sample
    )
    image_size: int = 256  # the original resizes every image to 256×256 (Lanczos)
    # native scale (msrf train --patch-size P [--scale S]): random P×P crops of the images
    # resampled by S instead of whole images resized; image_size is then P, and inference tiles
    # (None: the paper's resize protocol)
    patch_size: int | None = None
    scale: float | None = None  # resampling factor of the images before cropping/tiling
    canny_low: int = 10  # Canny thresholds of the image-gradient input (original: 10, 1000)
    canny_high: int = 1000
    edge_canny_low: int = 10  # Canny thresholds of the edge target (original: 10, 1000)
    edge_canny_high: int = 1000
    mask_threshold: float | None = None  # needed for label-map masks; None = binarise at half range
    mask_suffix: str = ""  # a mask's stem is its image's plus this (ISIC: "_segmentation")
    normalize: str = "minmax"  # 16-bit/float images to 0–255: "minmax" or "percentile" (1–99.8 %)
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
    subpixel: bool = (
        True  # DSDF up-convs as conv + pixel shuffle (exact, MSRFNet(upsampling='subpixel'))
    )
    # BN statistics recomputed from training batches before validation (train/precise_bn.py):
    # "auto" while the Keras momentum cannot have converged, "on" always, "off" never (original)
    precise_bn: str = "auto"
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

    def validate(
        self, where: str | Path | None = None, fields: Iterable[str] | None = None
    ) -> "Config":
        """Check every field (or those in ``fields``) by its rule (:mod:`msrfnet.options`, the
        CLI's rules), converting where needed; raise :class:`MSRFError` naming the field (and
        ``where``, e.g. a file)."""
        prefix = f"{where}: " if where else ""
        fields = set(_RULES if fields is None else fields)
        for name, rule in _RULES.items():
            if name not in fields or not hasattr(self, name):
                continue
            try:
                setattr(self, name, rule(getattr(self, name)))
            except ArgumentTypeError as e:
                raise MSRFError(f"{prefix}{name}: {e}") from None
        for low, high in (("canny_low", "canny_high"), ("edge_canny_low", "edge_canny_high")):
            lo, hi = getattr(self, low), getattr(self, high)
            if {low, high} <= fields and lo > hi:
                raise MSRFError(
                    f"{prefix}{low} {lo} is above {high} {hi}; "
                    "the low Canny threshold must not exceed the high one"
                )
        return self

    def save(self, path: str | Path) -> None:
        """Write as YAML, atomically: an interrupted save keeps the previous file whole."""
        from msrfnet.safe_output import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        """A config file, validated; raise :class:`MSRFError` naming the file when it is unreadable,
        not YAML, not a mapping, or holds a value that breaks a rule."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise MSRFError(f"{path}: cannot read ({e.strerror or e})") from e
        except UnicodeDecodeError as e:
            raise MSRFError(f"{path}: not a text file, so not a config") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or "syntax error"
            raise MSRFError(f"{path}: not valid YAML ({problem}{where})") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise MSRFError(f"{path}: not a config (a YAML {kind}, expected option: value lines)")
        return cls.from_dict(data).validate(path)


def check_resume_changes(saved: Config, new: Config) -> None:
    """Refuse, naming the field, a change to a resumed run outside :data:`RESUME_CHANGEABLE`.

    ``data`` may name the same folder differently; a cosine schedule fixes its length (epochs, or
    minutes) when the run starts, so those cannot change either.
    """
    for name in saved.to_dict():
        was, now = getattr(saved, name), getattr(new, name)
        if was == now or name in RESUME_CHANGEABLE:
            continue
        if name == "data" and None not in (was, now) and Path(was).resolve() == Path(now).resolve():
            continue
        raise MSRFError(
            f"{name}: cannot change when resuming (the run has {was!r}, asked "
            f"{now!r}); it would change what the run learns; start a new run for it"
        )
    if saved.schedule == "cosine":
        for name in ("epochs", "max_minutes"):
            if getattr(saved, name) != getattr(new, name):
                raise MSRFError(
                    f"{name}: cannot change when resuming a cosine-schedule run (its "
                    f"learning rate anneals over the {name} it started with, "
                    f"{getattr(saved, name)!r})"
                )


_RULES = {
    "data": opt.optional(opt.path_text),
    "image_size": opt.image_size,
    "patch_size": opt.optional(opt.image_size),
    "scale": opt.optional(opt.scale),
    "canny_low": opt.nonnegative_int,
    "canny_high": opt.nonnegative_int,
    "edge_canny_low": opt.nonnegative_int,
    "edge_canny_high": opt.nonnegative_int,
    "mask_threshold": opt.optional(opt.finite_float),
    "mask_suffix": opt.name_suffix,
    "normalize": opt.choice(NORMALIZATIONS),
    "augment": opt.boolean,
    "cache_dir": opt.optional(opt.path_text),
    "variant": opt.choice(VARIANTS),
    "in_channels": opt.positive_int,
    "num_classes": opt.positive_int,
    "epochs": opt.positive_int,
    "max_minutes": opt.optional(opt.positive_float),
    "batch_size": opt.positive_int,
    "lr": opt.positive_float,
    "schedule": opt.choice(SCHEDULES),
    "seed": opt.seed,
    "deterministic": opt.boolean,
    "precision": opt.choice(PRECISIONS),
    "devices": opt.devices,
    "strategy": opt.text,
    "num_nodes": opt.positive_int,
    "workers": opt.nonnegative_int,
    "compile": opt.boolean,
    "channels_last": opt.boolean,
    "subpixel": opt.boolean,
    "precise_bn": opt.choice(PRECISE_BN),
    "threshold": opt.probability,
    "out": opt.path_text,
    "name": opt.optional(opt.run_name),
    "extra": opt.mapping,
}
