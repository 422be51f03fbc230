"""``MODEL_CARD.md`` of a run folder: what was trained, from which weights (file and SHA-256, or
from scratch), on what, how, and how well — written at the end of every run, beside the weights it
describes, for the person who finds the folder later."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msrfnet.config import Config
from msrfnet.safe_output import atomic_write
from msrfnet.weights.checkpoint import package_versions

__all__ = ["MODEL_CARD", "RunSummary", "write_model_card"]

MODEL_CARD = "MODEL_CARD.md"


@dataclass
class RunSummary:
    """The numbers of a finished run that its card states."""

    n_train: int
    n_val: int
    best_dsc: float
    best_epoch: int | None
    start_dsc: float | None  # the validation before training (epoch 0), if any
    epochs_run: int
    elapsed_s: float

    @classmethod
    def of(cls, export, plot, datamodule, elapsed: float) -> "RunSummary":
        """From the run's :class:`~msrfnet.train.callbacks.WeightsExport` and
        :class:`~msrfnet.train.callbacks.CurvePlot` and its data."""
        first = plot.start_row()
        epochs = [r["epoch"] for r in plot.rows if r["epoch"] > 0]
        return cls(
            n_train=len(datamodule.train_set),
            n_val=len(datamodule.val_set),
            best_dsc=export.best,
            best_epoch=export.best_epoch,
            start_dsc=first["val_dsc"] if first else None,
            epochs_run=int(max(epochs, default=0)),
            elapsed_s=elapsed,
        )


def _start(config: Config) -> str:
    record = config.start_weights
    if not record:
        return "random initialisation (trained from scratch)"
    return (
        f"`{record['file']}` (SHA-256 `{record['sha256']}`, `--weights {config.weights}`, "
        f"read from `{record['path']}`): a fine-tune"
    )


def _recipe(config: Config, summary: RunSummary) -> str:
    bn = {"frozen": "frozen at the starting weights' statistics", "off": "running averages"}
    schedule = config.schedule + (
        f" after {config.warmup_steps} warm-up steps" if config.warmup_steps else ""
    )
    budget = f", at most {config.max_minutes:g} minutes" if config.max_minutes else ""
    return (
        f"variant `{config.variant}`, {summary.epochs_run} of {config.epochs} epochs{budget}, "
        f"batch {config.batch_size}, Adam lr {config.lr:g} ({schedule}), augmentation "
        f"{'on' if config.augment else 'off'}, BatchNorm "
        f"{bn.get(config.precise_bn, f'precise-bn {config.precise_bn}')}"
        + (f", {config.freeze} frozen" if config.freeze else "")
        + f", seed {config.seed}"
    )


def _inputs(config: Config) -> str:
    if config.patch_size:
        scale = f" after resampling by {config.scale:g}" if config.scale else " at native scale"
        geometry = f"random {config.patch_size}² crops{scale} (inference tiles)"
    else:
        geometry = f"RGB resized to {config.image_size}² (Lanczos)"
    return (
        f"{geometry}, 16-bit/float images to 0-255 by `{config.normalize}`, Canny map "
        f"({config.canny_low}, {config.canny_high}); foreground = probability "
        f"≥ {config.threshold:g}"
    )


def write_model_card(run_dir: Path, config: Config, summary: RunSummary) -> Path:
    """Write ``run_dir/MODEL_CARD.md`` atomically (replacing the card of an earlier end of the
    same run, e.g. before a resume); returns its path."""
    start = (
        f"{summary.start_dsc:.4f} before training (epoch 0), "
        if summary.start_dsc is not None
        else ""
    )
    at = f" at epoch {summary.best_epoch}" if summary.best_epoch is not None else ""
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    text = f"""# MSRF-Net run `{Path(run_dir).name}`

- **Started from**: {_start(config)}
- **Data**: `{config.data}`: {summary.n_train} training / {summary.n_val} validation images
- **Recipe**: {_recipe(config, summary)}
- **Input**: {_inputs(config)}
- **Validation DSC** (mean per image): {start}best {summary.best_dsc:.4f}{at}
- **Wall time**: {summary.elapsed_s:.0f} s of training ({versions})
- **Files**: `best.safetensors` (the best weights), `config.yaml`, `history.csv`, `curves.png`,
  `predictions.png`
- **Use**: `msrf predict IMAGES --weights {run_dir}` or
  `msrfnet.Segmenter.open("{run_dir}")`; fine-tune further with `msrf train --weights {run_dir}`
"""
    path = Path(run_dir) / MODEL_CARD
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
