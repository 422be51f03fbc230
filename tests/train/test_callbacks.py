"""The Lightning plumbing of a run (issue 20): the progress bar counts epochs from 1 like the rest
of the run, and a resumed run continues its CSV log in the same folder and file."""

from __future__ import annotations

import csv
import re
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from msrfnet.train.callbacks import ProgressBar, ResumableCSVLogger, epoch_description

# Lightning 2.6's own deprecation notice, not this package's
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


class _Tiny(L.LightningModule):
    """A linear layer on 4 samples: a real Trainer loop in well under a second."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 2), torch.zeros(4, 1)), batch_size=2)


def _bar_text(bar: TQDMProgressBar, capsys, epochs: int = 2) -> str:
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(_Tiny())
    return "".join(capsys.readouterr())  # Lightning's bar writes to stdout


def test_the_progress_bar_counts_epochs_from_1(capsys):
    shown = set(re.findall(r"Epoch \d+(?:/\d+)?", _bar_text(ProgressBar(), capsys)))
    assert shown == {"Epoch 1/2", "Epoch 2/2"}  # "Epoch 0" is never drawn, not even once


def test_lightnings_own_bar_counts_from_0(capsys):
    """What ProgressBar replaces (so the test above can tell them apart)."""
    shown = set(re.findall(r"Epoch \d+(?:/\d+)?", _bar_text(TQDMProgressBar(), capsys)))
    assert shown == {"Epoch 0", "Epoch 1"}


@pytest.mark.parametrize(
    ("max_epochs", "text"), [(5, "Epoch 3/5"), (-1, "Epoch 3"), (None, "Epoch 3")]
)
def test_epoch_description(max_epochs, text):
    assert epoch_description(SimpleNamespace(current_epoch=2, max_epochs=max_epochs)) == text


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_metrics(path, epochs: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss"])
        writer.writeheader()
        for i, epoch in enumerate(epochs):
            writer.writerow({"epoch": epoch, "step": i, "train/loss": 1.0 / (i + 1)})


def test_a_resumed_log_continues_the_same_file(tmp_path):
    metrics = tmp_path / "logs" / "metrics.csv"
    _write_metrics(metrics, [0, 0, 1, 1, 2])  # epoch 2 was interrupted: the checkpoint holds 0-1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = ResumableCSVLogger(tmp_path, version="logs", first_epoch=2)
        logger.log_metrics({"train/loss": 0.1, "epoch": 2}, step=5)
        logger.log_metrics({"val/dsc": 0.5, "epoch": 2}, step=5)  # a new column
        logger.save()
    assert [str(w.message) for w in caught if "not empty" in str(w.message)] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    rows = _rows(metrics)
    assert [(r["epoch"], r["step"]) for r in rows] == [
        ("0", "0"),
        ("0", "1"),
        ("1", "2"),
        ("1", "3"),
        ("2", "5"),
        ("2", "5"),
    ]  # the rows of the interrupted epoch 2 are replaced by the new ones
    assert rows[-1]["val/dsc"] == "0.5" and rows[0]["train/loss"] == "1.0"


def test_a_new_log_starts_a_file_and_lightnings_own_would_delete_it(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = ResumableCSVLogger(tmp_path, version="logs")
    logger.log_metrics({"train/loss": 0.3, "epoch": 0}, step=0)
    logger.save()
    assert [r["train/loss"] for r in _rows(tmp_path / "logs" / "metrics.csv")] == ["0.3"]
    with pytest.warns(UserWarning, match="exists and is not empty"):
        CSVLogger(str(tmp_path), name="", version="logs").experiment  # noqa: B018
    assert not (tmp_path / "logs" / "metrics.csv").exists()  # why logs-2/ was needed before
