"""The training loop end to end on real images (CPU, small sizes): files of a run, resume, the
non-finite-loss stop, determinism, and that the loop actually learns (overfit one image)."""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest
import torch
from _train_helpers import real_subset, train_args

from msrfnet.cli import main
from msrfnet.model.loading import load_model
from msrfnet.weights.checkpoint import read_checkpoint


def history(run) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return real_subset(tmp_path_factory.mktemp("kdsb"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One 2-epoch run at 64² (the issue's end-to-end size), shared by several tests."""
    out = tmp_path_factory.mktemp("runs")
    assert main(train_args(data, out, "e2e", size=64)) == 0
    return out / "e2e"


def test_run_directory_holds_everything(trained):
    for name in (
        "config.yaml",
        "best.safetensors",
        "last.safetensors",
        "best_metrics.json",
        "history.csv",
        "curves.png",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ):
        assert (trained / name).is_file(), name
    rows = history(trained)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    best = json.loads((trained / "best_metrics.json").read_text())  # the same epoch numbers
    assert best["epoch"] == int(max(rows, key=lambda r: float(r["val_dsc"]))["epoch"])
    assert all(np.isfinite(float(r["train_loss"])) and 0 <= float(r["val_dsc"]) <= 1 for r in rows)
    state, config, info = read_checkpoint(trained / "best.safetensors")
    assert config.image_size == 64 and config.epochs == 2 and info["variant"] == "official"
    assert {"torch", "msrfnet", "lightning"} <= set(info["versions"])
    assert 0 <= info["metrics"]["val/dsc"] <= 1
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    assert (
        ckpt["epoch"] == 1 and "msrf_rng" in ckpt and ckpt["optimizer_states"]
    )  # 0-based last epoch


def test_end_to_end_train_test_predict(trained, data, tmp_path):
    assert (
        main(["test", "--data", str(data), "--weights", str(trained), "--out", str(tmp_path / "t")])
        == 0
    )
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert (
        metrics["n_images"] == 2
        and np.isfinite(metrics["dsc"])
        and np.isfinite(metrics["orig_dsc"])
    )
    assert (
        main(
            [
                "predict",
                str(data / "test" / "images"),
                "--weights",
                str(trained),
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == sorted(
        p.name for p in (data / "test" / "images").iterdir()
    )


def _tree(folder) -> dict[str, int]:
    """Every file and folder under ``folder`` with its mtime."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _epochs_in_bar(text: str) -> list[str]:
    return sorted(set(re.findall(r"Epoch \d+(?:/\d+)?", text)))


def test_resume_continues_from_the_last_epoch(data, tmp_path, capsys):
    before = _tree(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(train_args(data, tmp_path, "r", epochs=1, size=16)) == 0
        first_out = "".join(capsys.readouterr())  # the bar is on stdout, warnings on stderr
        run = tmp_path / "r"
        assert main(["train", "--resume", str(run), "--epochs", "2", "--workers", "0"]) == 0
        resumed_out = "".join(capsys.readouterr())
    assert [r["epoch"] for r in history(run)] == ["1", "2"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    # one logs folder: the resumed run continues logs/metrics.csv (issue 20)
    assert sorted(p.name for p in run.glob("logs*")) == ["logs"]
    with open(run / "logs" / "metrics.csv") as f:
        logged = {int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("epoch")}
    assert logged == {0, 1}  # Lightning's 0-based epochs, both runs in one file
    noise = [str(w.message) for w in caught if "exists and is not empty" in str(w.message)]
    assert noise == [] and "exists and is not empty" not in first_out + resumed_out
    # the progress bar counts epochs from 1, as history.csv and best_metrics.json do
    assert _epochs_in_bar(first_out) == ["Epoch 1/1"]
    assert _epochs_in_bar(resumed_out) == ["Epoch 2/2"]
    assert _tree(data) == before  # the dataset was only read (its cache is elsewhere)


def test_nonfinite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    data, tmp_path, monkeypatch, capsys
):
    from msrfnet.losses import MSRFLoss

    real = MSRFLoss.forward
    calls = {"n": 0}

    def poisoned(self, out, mask, edge):
        total, terms = real(self, out, mask, edge)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] > 2 else total), terms  # epoch 1 = 2 steps

    monkeypatch.setattr(MSRFLoss, "forward", poisoned)
    monkeypatch.setattr("msrfnet.train.module.NONFINITE_CHECK_EVERY", 1)
    assert main(train_args(data, tmp_path, "nan", epochs=3)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "non-finite" in err[0] and "epoch 2" in err[0]
    model, _, _ = load_model(tmp_path / "nan" / "last.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (
        torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    )


def test_seed_and_deterministic_give_identical_runs(data, tmp_path):
    for name in ("a", "b"):
        assert (
            main(train_args(data, tmp_path, name, "--seed", "7", "--deterministic", epochs=1)) == 0
        )
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert drop_time(history(tmp_path / "a")) == drop_time(history(tmp_path / "b"))
    a = json.loads((tmp_path / "a" / "best_metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "best_metrics.json").read_text())
    assert a == b
    sa, _, _ = read_checkpoint(tmp_path / "a" / "best.safetensors")
    sb, _, _ = read_checkpoint(tmp_path / "b" / "best.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_existing_run_is_not_overwritten(trained, data, capsys):
    assert main(train_args(data, trained.parent, trained.name)) == 2
    assert "--resume" in capsys.readouterr().err
