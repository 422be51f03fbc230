"""Lightning plumbing that keeps a run safe and readable: atomic checkpoint writes, safetensors
copies of the best/last weights with their metadata, a training-curve figure, a progress bar that
counts epochs from 1, and a CSV log that a resumed run continues."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from msrfnet.metrics import per_image_dice_torch
from msrfnet.model import predict_proba
from msrfnet.model.loading import load_model
from msrfnet.model.msrfnet import scale_pixels
from msrfnet.overlay import comparison_panel, encode_png
from msrfnet.safe_output import atomic_write
from msrfnet.weights.checkpoint import save_torch, save_weights

__all__ = [
    "AtomicCheckpointIO",
    "InterruptNotice",
    "ProgressBar",
    "ResumableCSVLogger",
    "epoch_description",
    "WeightsExport",
    "CurvePlot",
    "plot_curves",
    "plot_predictions",
]

log = logging.getLogger("msrfnet")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file renamed into place: a run killed
    mid-write (``kill -9``, power loss) keeps the previous complete checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        try:
            atomic_write(path, lambda tmp: save_torch(checkpoint, tmp))
        except OSError as e:  # a full disk, a lost permission: one line naming the checkpoint
            from msrfnet.safe_output import io_error

            raise io_error(path, e) from e

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        # never unpickle arbitrary objects, whatever Lightning's own default is
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class InterruptNotice(L.Callback):
    """On Ctrl-C, one line that says how to continue the run (when it has a checkpoint)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            if (self.run_dir / "checkpoints" / "last.ckpt").exists():
                log.warning(
                    "interrupted: the last checkpoint is kept; continue with: "
                    "msrf train --resume %s",
                    self.run_dir,
                )


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, its epochs counted from 1 as everything else of a run counts them
    (the summary, ``history.csv``, ``best_metrics.json``): "Epoch 1/2" for the first of two, where
    Lightning says "Epoch 0". Without ``v_num``: the logger's version is the name of the run's log
    folder ("logs"), which says nothing in a run folder of its own."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # Lightning's own, with the description set before the bar is redrawn (calling it and then
        # renaming the bar would still draw "Epoch 0" once)
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.set_description(epoch_description(trainer), refresh=False)
        total = convert_inf(self.total_train_batches)
        bar.reset(total=total)
        bar.total, bar.initial = total, 0  # reset keeps the old total when the new one is None

    @property
    def sanity_check_description(self) -> str:
        return "Validation before training (epoch 0)"  # the only sanity check msrf train runs

    def get_metrics(self, trainer: L.Trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def epoch_description(trainer: L.Trainer) -> str:
    """``Epoch k/N`` of the epoch starting now, counted from 1 (``Epoch k`` without a limit)."""
    total = trainer.max_epochs
    return f"Epoch {trainer.current_epoch + 1}" + (f"/{total}" if total and total > 0 else "")


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, continued on ``--resume`` in the same folder and file.

    Lightning's own deletes an existing ``metrics.csv`` (with a warning) when its folder exists, so
    a resumed run used to log into a second folder (``logs-2/``). This one keeps the rows of the
    epochs before ``first_epoch`` (the epoch the resume starts with; the rows of that epoch that
    the interrupted run logged are dropped, since it runs again) and appends to them.
    """

    def __init__(self, save_dir: str | Path, version: str, first_epoch: int = 0) -> None:
        super().__init__(str(save_dir), name="", version=version)
        self.first_epoch = first_epoch

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self.first_epoch)
        return self._experiment


class _ContinuedWriter(ExperimentWriter):
    """The experiment writer of :class:`ResumableCSVLogger`: starts from the kept rows."""

    def __init__(self, log_dir: str, first_epoch: int) -> None:
        self._first_epoch = first_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if _epoch_of(r) < self._first_epoch]
        self.metrics_keys = fields
        if len(kept) < len(rows):

            def write(tmp) -> None:
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(kept)

            atomic_write(path, write)


def _epoch_of(row: dict[str, str]) -> float:
    """The (0-based) epoch of a row of ``metrics.csv``; a row without one counts as kept."""
    try:
        return float(row.get("epoch") or "-inf")
    except ValueError:
        return float("-inf")


class WeightsExport(L.Callback):
    """After each validation: ``last.safetensors`` always, ``best.safetensors`` when ``val/dsc``
    improves — the weights with config, metrics and package versions, safe to share. A fine-tune's
    validation before training (epoch 0) counts too: the starting weights are the best until
    the fine-tune beats them."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.best = float("-inf")
        self.best_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict.get("best", float("-inf")))
        self.best_epoch = state_dict.get("best_epoch")

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if trainer.sanity_checking:  # the validation before training: a fine-tune's start
            if not pl_module.config.start_weights:
                return
            metrics["epoch"] = 0
        else:
            metrics["epoch"] = trainer.current_epoch + 1  # from 1, as history.csv and the bar
            save_weights(
                self.run_dir / "last.safetensors", pl_module.model, pl_module.config, metrics
            )
        dsc = metrics.get("val/dsc", float("nan"))
        if dsc > self.best:
            self.best, self.best_epoch = dsc, metrics["epoch"]
            save_weights(
                self.run_dir / "best.safetensors", pl_module.model, pl_module.config, metrics
            )
            atomic_write(
                self.run_dir / "best_metrics.json",
                lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1)),
            )


class CurvePlot(L.Callback):
    """``curves.png``: training loss and validation loss/DSC per epoch, redrawn after every epoch,
    plus ``history.csv`` with the same numbers, the wall time since the start of training
    (validation included), which gives the time to a target DSC, and ``precise_bn`` (1 when the
    BN statistics of that validation were recomputed, :mod:`msrfnet.train.precise_bn`)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, float]] = []
        self._t0: float | None = None
        self._offset = 0.0  # training seconds of the epochs before a resume

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._offset = self.rows[-1]["elapsed_s"] if self.rows else 0.0

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        """The validation before training (``validate_first``): row ``epoch 0``, and one line."""
        if not trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        get = lambda k: float(m[k]) if k in m else float("nan")  # noqa: E731
        row = {"epoch": 0, "elapsed_s": 0.0, "train_loss": float("nan")}
        row.update(val_loss=get("val/loss"), val_dsc=get("val/dsc"), precise_bn=0.0)
        self.rows = [r for r in self.rows if r["epoch"] != 0] + [row]
        self.rows.sort(key=lambda r: r["epoch"])
        what = "the starting weights" if pl_module.config.start_weights else "the initial weights"
        log.info("epoch 0 (before training): validation DSC %.4f (%s)", row["val_dsc"], what)
        self._write()

    def start_row(self) -> dict[str, float] | None:
        """The row of the validation before training (epoch 0), if the run made one."""
        return next((r for r in self.rows if r["epoch"] == 0), None)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        # validation has run by now (Lightning validates before the train-epoch-end hooks), and the
        # epoch-averaged training loss exists only from here on
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        get = lambda k: float(m[k]) if k in m else float("nan")  # noqa: E731
        self.rows = [r for r in self.rows if r["epoch"] != trainer.current_epoch + 1]
        elapsed = self._offset + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "elapsed_s": round(elapsed, 2),
                "train_loss": get("train/loss_epoch"),
                "val_loss": get("val/loss"),
                "val_dsc": get("val/dsc"),
                "precise_bn": get("precise_bn"),
            }
        )
        self._write()

    def _write(self) -> None:
        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                # rows of a run resumed from an older version may lack a later column
                fields = list(dict.fromkeys(k for r in self.rows for k in r))
                w = csv.DictWriter(f, fieldnames=fields, restval="")
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.run_dir / "history.csv", write_csv)
        plot_curves(self.rows, self.run_dir / "curves.png")


def plot_curves(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in rows], "s-", label="validation")
    a.set(
        xlabel="epoch",
        ylabel="loss",
        title="Loss: 2·Lseg(final) + BCE(edge) + Lseg(aux2) + Lseg(aux4)",
    )
    a.legend()
    b.plot(ep, [r["val_dsc"] for r in rows], "o-", color="tab:green")
    b.set(
        xlabel="epoch",
        ylabel="mean per-image DSC",
        title="Validation DSC (threshold 0.5)",
        ylim=(0, 1),
    )
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_predictions(
    weights: Path, dataset, path: Path, threshold: float = 0.5, rows: int = 4
) -> Path:
    """``predictions.png``: the first ``rows`` images of ``dataset`` (the validation set), each as
    image | truth | prediction with its DSC, by the weights in ``weights`` in eval mode and float32:
    what ``msrf test`` and ``msrf predict`` will get from them."""
    import numpy as np

    model, _, _ = load_model(weights)
    items = [dataset[i] for i in range(min(rows, len(dataset)))]
    stack = lambda key: torch.stack([it[key] for it in items]).float()  # noqa: E731
    with torch.inference_mode():
        probs = predict_proba(model, scale_pixels(stack("image")), stack("canny"))[:, 0].numpy()
    preds = torch.from_numpy(probs >= threshold)
    truths = torch.stack([it["mask"][0].bool() for it in items])
    dsc = per_image_dice_torch(preds[:, None], truths[:, None]).tolist()
    panels = [
        comparison_panel(
            it["image"].numpy().transpose(1, 2, 0),
            truth.numpy(),
            pred.numpy(),
            f"{dataset.stems[it['index']][:40]}  DSC {d:.3f}  (image | truth | prediction)",
        )
        for it, truth, pred, d in zip(items, truths, preds, dsc)
    ]
    gap = np.full((6, panels[0].shape[1], 3), 255, np.uint8)
    figure = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=0)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(encode_png(figure)))
    return path
