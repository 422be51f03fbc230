"""``msrf test`` and weights resolution: metrics at two resolutions, CSV/JSON, overlays, CLI."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
from _data_helpers import make_dataset
from _logs import said
from _model_helpers import make_weights

import msrfnet.weights.resolve as wr
from msrfnet.cli import main
from msrfnet.data import sample_root
from msrfnet.errors import MSRFError
from msrfnet.inference.report import PAPER_METRICS, format_table, ranked
from msrfnet.inference.test import (
    SplitPlan,
    default_out,
    instance_truth_folder,
    open_segmenter,
    plan_test,
    run_split,
    test,
)
from msrfnet.metrics import summarize
from msrfnet.option_groups import ModelSource, Objects, Tiling
from msrfnet.safe_output import OutputFolder
from msrfnet.weights.resolve import resolve_weights

N_TEST = 5  # images in the bundled sample's test split


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=32)


# --- weights resolution -------------------------------------------------------------------------


def _run(root, name, mtime):
    path = root / "runs" / name / "best.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_resolve_explicit(tmp_path):
    run = _run(tmp_path, "r1", 1_000_000)
    assert resolve_weights(str(run.parent), prefer_runs=True) == run
    assert resolve_weights(str(run), prefer_runs=False) == run
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty_run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(
        MSRFError, match="empty_run: run folder without best.safetensors.*last.ckpt"
    ):
        resolve_weights(str(tmp_path / "empty_run"), prefer_runs=True)
    with pytest.raises(MSRFError, match="nope.safetensors: no such weights file or run folder"):
        resolve_weights(str(tmp_path / "nope.safetensors"), prefer_runs=True)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(MSRFError, match="w.txt: not a checkpoint"):
        resolve_weights(str(tmp_path / "w.txt"), prefer_runs=True)


def test_resolve_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "pkg" / "msrfnet_kdsb.safetensors"
    monkeypatch.setattr(wr, "SHIPPED_WEIGHTS", shipped)
    with pytest.raises(MSRFError) as e:
        resolve_weights(None, prefer_runs=True)
    assert (
        str(e.value)
        == "no weights: pass --weights RUN_DIR|FILE (no run in ./runs and no shipped weights)"
    )
    old = _run(tmp_path, "msrf-b-old", 1_000_000).relative_to(tmp_path)
    new = _run(tmp_path, "msrf-a-new", 2_000_000).relative_to(
        tmp_path
    )  # newest by time, not by name
    (tmp_path / "runs" / "unfinished").mkdir()
    with said() as lines:
        assert resolve_weights(None, prefer_runs=True, announce=True) == new
        assert resolve_weights(None, prefer_runs=False) == new  # no shipped weights: newest run
        shipped.parent.mkdir()
        shipped.write_bytes(b"x")
        assert resolve_weights(None, prefer_runs=True) == new
        assert resolve_weights(None, prefer_runs=False, announce=True) == shipped
    assert lines == [
        f"weights: {new} (newest run in ./runs)",
        f"weights: {shipped} (shipped weights)",
    ]
    assert old != new


# --- test: plan and run -------------------------------------------------------------------------


def _finite(x):
    return x is not None and math.isfinite(x)


def test_run_test_outputs(weights, tmp_path):
    out = tmp_path / "out"
    with said() as lines:
        result = test(model=ModelSource(weights=str(weights), batch_size=2), out=str(out))
    saved = json.loads((out / "metrics.json").read_text())
    summary_keys = set(summarize([]))
    assert summary_keys <= set(saved)
    assert {f"orig_{k}" for k in summary_keys} <= set(saved)
    assert {"n_images", "image_size", "threshold", "weights", "data", "numerics"} <= set(saved)
    assert saved["n_images"] == N_TEST and saved["image_size"] == 32 and saved["threshold"] == 0.5
    assert saved["weights"] == str(weights) and saved["data"].endswith("sample")
    for key in (
        "dsc",
        "iou",
        "miou",
        "precision",
        "recall",
        "precision_global",
        "recall_global",
        "accuracy",
        "f2",
    ):
        assert _finite(saved[key]) and _finite(saved[f"orig_{key}"]), key
        assert 0.0 <= saved[key] <= 1.0
    assert 0.0 < saved["dsc"] < 1.0  # the calibrated model is neither empty nor perfect
    assert result["dsc"] == saved["dsc"]

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TEST
    for row in rows:
        h, w = int(row["height"]), int(row["width"])
        # original-resolution counts cover the original image, model-resolution ones S×S
        assert sum(int(row[f"orig_{k}"]) for k in ("tp", "fp", "fn", "tn")) == h * w
        assert sum(int(row[k]) for k in ("tp", "fp", "fn", "tn")) == 32 * 32
    dsc_mean = sum(float(r["dsc"]) for r in rows) / N_TEST
    assert abs(dsc_mean - saved["dsc"]) < 1e-5
    assert abs(sum(float(r["orig_dsc"]) for r in rows) / N_TEST - saved["orig_dsc"]) < 1e-5

    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    n = min(8, N_TEST)
    assert len(overlays) == 2 * n
    assert sum(name.startswith("best_") for name in overlays) == n
    assert "best_01_" in overlays[0] and overlays[-1].startswith(f"worst_{n:02d}_")

    text = "\n".join(lines)
    assert text.index("DSC") < text.index("mIoU") < text.index("F2")
    assert "per-image mean" in text and "pooled" in text and str(out) in text


def test_image_size_override_and_rerun_replaces_overlays(weights, tmp_path):
    out = tmp_path / "out"
    # a panel of an earlier msrf test (in the folder's manifest), and a user's file beside it
    OutputFolder(out, "msrf test").write_bytes("overlays/best_09_stale.png", b"x")
    (out / "overlays" / "notes.txt").write_text("mine")
    with pytest.raises(MSRFError, match="best_09_stale.png: exists .* pass --overwrite"):
        test(model=ModelSource(weights=str(weights), image_size=40), out=str(out))
    result = test(
        model=ModelSource(weights=str(weights), image_size=40, threshold=0.4),
        out=str(out),
        overwrite=True,
    )
    assert result["image_size"] == 40 and result["threshold"] == 0.4
    assert not (out / "overlays" / "best_09_stale.png").exists()
    assert (out / "overlays" / "notes.txt").read_text() == "mine"
    with open(out / "metrics.csv", newline="") as f:
        assert all(
            sum(int(r[k]) for k in ("tp", "fp", "fn", "tn")) == 40 * 40 for r in csv.DictReader(f)
        )


def test_cli_test_default_weights_and_out(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wr, "SHIPPED_WEIGHTS", tmp_path / "absent.safetensors")
    run = tmp_path / "runs" / "msrf-demo"
    run.mkdir(parents=True)
    (run / "best.safetensors").write_bytes(weights.read_bytes())
    (run / "config.yaml").write_text("image_size: 32\n")
    assert main(["test", "--batch-size", "4"]) == 0  # newest run, bundled sample, <run>/test
    captured = capsys.readouterr().out
    assert (run / "test" / "metrics.json").is_file()
    assert "newest run in ./runs" in captured and "bundled 2018 DSB sample" in captured


def test_cli_bad_weights_one_line(tmp_path, capsys):
    assert main(["test", "--weights", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "missing.safetensors" in err[0] and err[0].startswith("msrf test: error:")
    )


def test_bad_options(weights, tmp_path):
    with pytest.raises(MSRFError, match="multiple of 8"):
        test(model=ModelSource(weights=str(weights), image_size=36), out=str(tmp_path))
    with pytest.raises(MSRFError, match="threshold"):
        test(model=ModelSource(weights=str(weights), threshold=-0.1), out=str(tmp_path))
    with pytest.raises(MSRFError, match="nowhere: dataset folder not found"):
        test(str(tmp_path / "nowhere"), model=ModelSource(weights=str(weights)), out=str(tmp_path))
    with pytest.raises(MSRFError, match="batch_size 0: "):
        ModelSource(weights=str(weights), batch_size=0)
    with pytest.raises(MSRFError, match="^tta: msrf test scores the model as it is"):
        test(model=ModelSource(weights=str(weights), tta=True), out=str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_ranked_and_table():
    rows = [{"dsc": d} for d in (0.5, 0.9, 0.1, 0.9, 0.3)]
    best, worst = ranked(rows, count=3)
    assert best == [1, 3, 0] and worst == [2, 4, 0]
    table = format_table(
        {"image_size": 32, "n_images": 5, "dsc": 0.5, "orig_dsc": float("nan"), "hd95_undefined": 2}
    )
    lines = table.splitlines()
    assert [label for _, label, _ in PAPER_METRICS] == ["DSC", "mIoU", "recall", "precision"]
    assert lines[2].split()[0] == "DSC" and lines[2].split()[-2:] == ["0.5000", "n/a"]
    assert "32x32" in lines[0] and "original" in lines[0]


# --- the plan, without a model ------------------------------------------------------------------


def test_plan_reads_the_split_and_checks_the_out_folder(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 3})
    run = root / "runs" / "msrf-x"  # msrf train --data . puts its run folder here
    plan = plan_test(root, run / "test", mask_suffix="", batch_size=2)
    assert isinstance(plan, SplitPlan) and plan.out == run / "test" and plan.split == "test"
    assert [p.stem for p in plan.pairs] == ["s000", "s001", "s002"]
    assert plan.inputs == (root / "test" / "images", root / "test" / "masks")
    assert plan.tiling is None and plan.objects is None and plan.labels == {}
    assert not (run / "test").exists()  # planning writes nothing
    plan_test(root, root, tiling={"tile": 32, "overlap": 0.25, "scale": None})  # beside the splits
    for out, where in (
        (root / "test" / "images", "is the input folder"),
        (root / "test" / "masks" / "m", "lies inside the input folder"),
    ):
        with pytest.raises(MSRFError) as e:
            plan_test(root, out)
        assert str(e.value) == (
            f"--out {out}: {where} {out if where.startswith('is') else out.parent}; msrf never "
            "writes among its inputs, choose a folder outside it"
        )
    with pytest.raises(MSRFError, match=r"d/train: no test/ folder"):
        plan_test(tmp_path / "d" / "train", tmp_path / "o")


def test_plan_with_objects_pairs_the_label_images(tmp_path):
    root = make_dataset(tmp_path / "d", {"test": 2})
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("s000.png", "s001.tif", "notes.txt"):
        (labels / name).write_bytes(b"x")
    plan = plan_test(root, tmp_path / "o", objects=Objects(min_size=3), instances_gt=labels)
    assert plan.objects.min_size == 3 and plan.instances_gt == labels
    assert plan.labels == {"s000": labels / "s000.png", "s001": labels / "s001.tif"}
    assert plan.inputs[-1] == labels
    with pytest.raises(MSRFError, match="--out .*: is the input folder .*labels"):
        plan_test(root, labels, objects=Objects(), instances_gt=labels)
    (labels / "s001.tif").unlink()
    with pytest.raises(MSRFError, match=r"no label image with stem 's001'$"):
        plan_test(root, tmp_path / "o", objects=Objects(), instances_gt=labels)
    with pytest.raises(MSRFError, match="--instances-gt .*nowhere: no such folder"):
        instance_truth_folder(Objects(), tmp_path / "nowhere")
    assert instance_truth_folder(None, None) is None
    assert not (tmp_path / "o").exists()


def test_default_out_and_a_tiling_other_than_the_plans(weights, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("image_size: 32\n")
    assert default_out(run / "best.safetensors") == run / "test"
    assert str(default_out(tmp_path / "w.safetensors")) == "msrf-test"
    seg = open_segmenter(ModelSource(weights=str(weights)), Tiling(tile=32))
    assert seg.tiling == {"tile": 32, "overlap": 0.25, "scale": None}
    plan = plan_test(sample_root(), tmp_path / "o")
    with pytest.raises(ValueError, match="plan for tiling None"):
        run_split(plan, seg)


def test_entry_point_is_not_collected_by_pytest():
    assert test.__test__ is False


def test_a_model_size_this_machine_cannot_hold_is_refused_first(weights, tmp_path, monkeypatch):
    import msrfnet.options as options

    out = tmp_path / "out"
    # one 32² input fits (the Segmenter's own check when it loads), four at once do not
    monkeypatch.setattr(options, "available_ram", lambda: (8 << 20, "of RAM available"))
    with pytest.raises(MSRFError) as e:
        test(model=ModelSource(weights=str(weights), batch_size=4), out=out)
    assert str(e.value).startswith("--image-size 32: predicting 4 inputs of 32×32 at once needs")
    assert str(e.value).endswith("of RAM available; lower --image-size or the batch size")
    assert not out.exists()
