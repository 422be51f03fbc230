"""Lightning plumbing that keeps a run safe and readable: atomic checkpoint writes, safetensors
copies of the best/last weights with their metadata, and a training-curve figure."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .checkpoint import atomic_write, save_weights


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file renamed into place: a run killed
    mid-write (``kill -9``, power loss) keeps the previous complete checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        # never unpickle arbitrary objects, whatever Lightning's own default is
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class WeightsExport(L.Callback):
    """After each validation: ``last.safetensors`` always, ``best.safetensors`` when ``val/dsc``
    improves — the weights with config, metrics and package versions, safe to share."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.best = float("-inf")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict.get("best", float("-inf")))

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics["epoch"] = trainer.current_epoch
        save_weights(self.run_dir / "last.safetensors", pl_module.model, pl_module.config, metrics)
        dsc = metrics.get("val/dsc", float("nan"))
        if dsc > self.best:
            self.best = dsc
            save_weights(self.run_dir / "best.safetensors", pl_module.model, pl_module.config, metrics)
            atomic_write(self.run_dir / "best_metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1)))


class CurvePlot(L.Callback):
    """``curves.png``: training loss and validation loss/DSC per epoch, redrawn after every epoch,
    plus ``history.csv`` with the same numbers and the wall time since the start of training
    (validation included), which gives the time to a target DSC."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, float]] = []
        self._t0: float | None = None
        self._offset = 0.0  # training seconds of the epochs before a resume

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._offset = self.rows[-1]["elapsed_s"] if self.rows else 0.0

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
        self.rows.append({"epoch": trainer.current_epoch + 1, "elapsed_s": round(elapsed, 2),
                          "train_loss": get("train/loss_epoch"), "val_loss": get("val/loss"), "val_dsc": get("val/dsc")})
        self._write()

    def _write(self) -> None:
        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(self.rows[0]))
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
    a.set(xlabel="epoch", ylabel="loss (2·Lseg(x) + BCE(edge) + Lseg(aux2) + Lseg(aux4))", title="Loss")
    a.legend()
    b.plot(ep, [r["val_dsc"] for r in rows], "o-", color="tab:green")
    b.set(xlabel="epoch", ylabel="mean per-image DSC", title="Validation DSC (threshold 0.5)", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
