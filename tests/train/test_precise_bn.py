"""Precise BN (msrfnet/train/precise_bn.py): stale BatchNorm running statistics make eval-mode
numbers describe another network, recomputing them closes the gap, the rule leaves long runs of the
original recipe alone, and a training run records what it did and draws its predictions.

The stale statistics are fabricated on the shipped kdsb weights (a network that segments): their
running statistics are reset to BatchNorm's initial values (mean 0, variance 1), which is what
the Keras momentum leaves ~47 % of after the demo's 75 steps.
"""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch
from _train_helpers import real_subset, train_args
from torch.utils.data import DataLoader

from msrfnet.cli import main
from msrfnet.config import Config
from msrfnet.data import MSRFDataModule, sample_root
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet
from msrfnet.model.loading import load_model
from msrfnet.train.callbacks import CurvePlot
from msrfnet.train.module import to_inputs
from msrfnet.train.precise_bn import (
    GAP_WARNING,
    PreciseBN,
    batch_norms,
    dsc_gap,
    needs_recalibration,
    recompute_bn_stats,
)
from msrfnet.weights.checkpoint import read_checkpoint
from msrfnet.weights.resolve import SHIPPED_WEIGHTS

SIZE = 32


@pytest.fixture(scope="module")
def sample():
    data = MSRFDataModule(Config(image_size=SIZE, batch_size=4, workers=0), sample_root())
    data.setup("fit")
    return data


def _stale_shipped_model(channels_last: bool = False):
    model, _, _ = load_model(SHIPPED_WEIGHTS)
    if channels_last:
        model = model.rebuild(upsampling="subpixel").to(memory_format=torch.channels_last)
    for bn in batch_norms(model):
        bn.reset_running_stats()
    return model


def test_recomputed_statistics_close_the_gap_of_stale_ones(sample, one_thread, caplog):
    model = _stale_shipped_model()
    forward = lambda batch: model(*to_inputs(batch)[:2])  # noqa: E731
    val = DataLoader(sample.val_set, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="msrfnet"):
        stale, batch_stats = dsc_gap(model, val, forward)
    assert batch_stats - stale > GAP_WARNING, (stale, batch_stats)  # eval mode: another network
    assert "--precise-bn on" in caplog.text
    caplog.clear()

    bn = batch_norms(model)[0]
    momentum, count = bn.momentum, bn.num_batches_tracked.clone()
    train = DataLoader(sample.train_set, batch_size=4, shuffle=True, drop_last=True)
    assert recompute_bn_stats(model, train, forward) == len(sample.train_set) // 4
    assert not model.training and bn.momentum == momentum
    assert torch.equal(bn.num_batches_tracked, count)
    with caplog.at_level(logging.WARNING, logger="msrfnet"):
        fresh, batch_again = dsc_gap(model, val, forward)
    assert batch_again == batch_stats  # dsc_gap left the running statistics alone
    assert fresh > stale + GAP_WARNING, (stale, fresh)
    assert fresh > batch_stats - GAP_WARNING, (fresh, batch_stats)
    assert "--precise-bn" not in caplog.text


def test_recompute_with_channels_last_subpixel_and_bf16_autocast(sample, one_thread):
    """The training configuration of a GPU run (on the CPU): statistics of the bf16-autocast
    forward, finite, moved away from the initial values, and no batches keep the old ones."""
    model = _stale_shipped_model(channels_last=True)
    forward_fp32 = lambda batch: model(*to_inputs(batch, channels_last=True)[:2])  # noqa: E731

    def forward(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward_fp32(batch)

    batches = list(DataLoader(sample.train_set, batch_size=4))[:2]
    assert recompute_bn_stats(model, [], forward) == 0
    assert all(
        torch.equal(b.running_var, torch.ones_like(b.running_var)) for b in batch_norms(model)
    )  # no batch: the old statistics are kept
    assert recompute_bn_stats(model, batches, forward) == 2
    bf16 = [b.running_var.clone() for b in batch_norms(model)]
    assert all(torch.isfinite(v).all() and not torch.allclose(v, torch.ones_like(v)) for v in bf16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        recompute_bn_stats(model, batches, forward)
        bf16 = [b.running_var.clone() for b in batch_norms(model)]
        torch.manual_seed(0)  # the same dropout masks: only the precision differs
        recompute_bn_stats(model, batches, forward_fp32)
    first = batch_norms(model)[0].running_var
    assert torch.allclose(bf16[0], first, rtol=0.05, atol=1e-3)


def test_the_rule_recalibrates_short_runs_and_leaves_the_original_recipe_alone():
    model = MSRFNet()
    assert {bn.momentum for bn in batch_norms(model)} == {0.01}  # Keras' momentum 0.99
    assert needs_recalibration("auto", model, 75)  # the demo: 15 epochs x 5 steps
    # the original recipe on kdsb: 536 training images, batch 4 -> 134 steps an epoch, 125 epochs
    decisions = [needs_recalibration("auto", model, 134 * epoch) for epoch in range(1, 126)]
    assert decisions[:3] == [True] * 3 and not any(decisions[3:])
    assert needs_recalibration("on", model, 134 * 125) and not needs_recalibration("off", model, 1)
    for bn in batch_norms(model):
        bn.momentum = None  # torch's cumulative average has no initial values left to forget
    assert not needs_recalibration("auto", model, 1)
    with pytest.raises(MSRFError, match="precise_bn 'sometimes'"):
        PreciseBN("sometimes")


def test_old_config_without_the_field_loads_as_auto(tmp_path):
    old = {k: v for k, v in Config().to_dict().items() if k != "precise_bn"}
    (tmp_path / "config.yaml").write_text(json.dumps(old))  # JSON is YAML
    assert Config.load(tmp_path / "config.yaml").precise_bn == "auto"


def test_history_of_an_older_run_gains_the_column(tmp_path):
    plot = CurvePlot(tmp_path)
    plot.rows = [{"epoch": 1, "elapsed_s": 1.0, "train_loss": 2.0, "val_loss": 2.0, "val_dsc": 0.1}]
    plot.rows.append({**plot.rows[0], "epoch": 2, "precise_bn": 1.0})
    plot._write()
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["precise_bn"] for r in rows] == ["", "1.0"]


def _history(run) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_a_short_run_records_precise_bn_and_draws_its_predictions(tmp_path, capsys, one_thread):
    data = real_subset(tmp_path / "data")
    runs = {}
    for mode in ("auto", "off"):
        args = train_args(
            data, tmp_path / "runs", mode, "--precise-bn", mode, "--deterministic", size=16
        )
        assert main(args) == 0
        runs[mode] = tmp_path / "runs" / mode
    out = capsys.readouterr().out
    on, off = runs["auto"], runs["off"]
    assert f"validation predictions of the best weights: {on / 'predictions.png'}" in out
    assert (on / "predictions.png").stat().st_size > 0
    assert "recomputed before 2 of 2 validations" in out

    assert [r["precise_bn"] for r in _history(on)] == ["1.0", "1.0"]
    assert [r["precise_bn"] for r in _history(off)] == ["0.0", "0.0"]
    assert json.loads((on / "best_metrics.json").read_text())["precise_bn"] == 1.0
    _, config, info = read_checkpoint(on / "last.safetensors")
    assert config.precise_bn == "auto" and info["metrics"]["precise_bn"] == 1.0
    # training itself is the same: the recomputation touches no RNG and no training batch order
    assert [r["train_loss"] for r in _history(on)] == [r["train_loss"] for r in _history(off)]

    # 'off' keeps the EMA: after 4 steps it has moved 1 - 0.99^4 (4 %) of the way that the
    # recomputed statistics went from BatchNorm's initial values
    init = batch_norms(MSRFNet())
    moved = {}
    for mode, run in runs.items():
        model, _, _ = load_model(run / "last.safetensors")
        moved[mode] = sum(
            float((b.running_mean - i.running_mean).abs().sum())
            for b, i in zip(batch_norms(model), init)
        )
    assert 0 < moved["off"] < 0.2 * moved["auto"], moved
