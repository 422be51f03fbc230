"""Fine-tuning from weights (issue 21, items 1, 2, 4, 6), by tiny runs at 32² on the bundled
sample: ``msrf train --weights`` starts where the weights are (its epoch-0 validation DSC is their
own), records where it started, never writes the starting weights, keeps frozen parts frozen and
resumes; ``msrfnet.finetune`` runs the same path from arrays or folders and returns a Segmenter."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _model_helpers import make_weights
from _train_helpers import real_subset

import msrfnet
from msrfnet.cli import main
from msrfnet.config import Config
from msrfnet.data import MSRFDataModule, read_image, read_mask, sample_root
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet
from msrfnet.model.loading import load_model
from msrfnet.model.msrfnet import scale_pixels
from msrfnet.train import finetune as finetune_module
from msrfnet.train.finetune import finetune_run
from msrfnet.train.precise_bn import validation_dsc
from msrfnet.train.start import finetune_config, load_start, read_start
from msrfnet.weights.checkpoint import read_checkpoint


def _stamp(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _args(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    """``msrf train`` of one tiny epoch, the image size left to the weights (or given)."""
    common = ["--epochs", "1", "--batch-size", "2", "--workers", "0", "--max-minutes", "10"]
    return ["train", "--data", str(data), "--out", str(out), "--name", name, *common, *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return real_subset(tmp_path_factory.mktemp("kdsb"), {"train": 2, "val": 2, "test": 1})


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "start.safetensors", image_size=32)


@pytest.fixture(scope="module")
def finetuned(data, start, tmp_path_factory) -> tuple[Path, tuple[int, str]]:
    """``msrf train --weights start.safetensors --freeze encoder``, 1 epoch; the weights' stamp
    before it. A constant schedule (after the warm-up), so that it can resume with more epochs."""
    before = _stamp(start)
    out = tmp_path_factory.mktemp("runs")
    extra = ("--weights", str(start), "--freeze", "encoder", "--schedule", "constant")
    assert main(_args(data, out, "ft", *extra)) == 0
    return out / "ft", before


def _own_validation_dsc(weights: Path, data: Path) -> float:
    """The validation DSC of ``weights`` measured without msrf train: the model loaded from the
    file in eval mode, on the validation split at the weights' size."""
    model, config, _ = load_model(weights)
    datamodule = MSRFDataModule(Config(image_size=config.image_size, workers=0), data)
    datamodule.setup("validate")
    loader = torch.utils.data.DataLoader(datamodule.val_set, batch_size=1)
    with torch.inference_mode():
        return validation_dsc(
            loader, lambda b: model(scale_pixels(b["image"]), b["canny"].float()), 0.5
        )


def test_the_first_validation_is_the_weights_own(finetuned, start, data, tmp_path, caplog):
    run, _ = finetuned
    rows = _history(run)
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[0]["train_loss"] == "nan"
    own = _own_validation_dsc(start, data)
    assert float(rows[0]["val_dsc"]) == pytest.approx(own, abs=1e-6)
    # from scratch (the same data and size, --validate-first) it starts elsewhere
    out = tmp_path / "runs"
    assert main(_args(data, out, "scratch", "--image-size", "32", "--validate-first")) == 0
    scratch = _history(out / "scratch")
    assert [r["epoch"] for r in scratch] == ["0", "1"]
    assert abs(float(scratch[0]["val_dsc"]) - own) > 1e-3
    said = f"epoch 0 (before training): validation DSC {float(scratch[0]['val_dsc']):.4f}"
    assert f"{said} (the initial weights)" in caplog.text


def test_the_run_records_its_start_and_never_writes_it(finetuned, start):
    run, before = finetuned
    assert _stamp(start) == before
    sha = before[1]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["weights"] == str(start)
    assert config["start_weights"] == {"file": start.name, "path": str(start), "sha256": sha}
    assert config["image_size"] == 32 and config["lr"] == 5e-5 and config["precise_bn"] == "frozen"
    card = (run / "MODEL_CARD.md").read_text()
    assert f"`{start.name}` (SHA-256 `{sha}`" in card and "a fine-tune" in card
    _, saved, _ = read_checkpoint(run / "best.safetensors")
    assert saved.start_weights["sha256"] == sha  # the weights carry it too
    assert sorted(p.name for p in start.parent.iterdir()) == [start.name]


def test_frozen_parts_and_statistics_stay_the_starting_weights(finetuned, start):
    run, _ = finetuned
    first, _, _ = read_checkpoint(start)
    last, _, _ = read_checkpoint(run / "last.safetensors")
    for name, value in first.items():
        same = torch.equal(last[name].float(), value.float())
        if name.startswith("encoder.") or name.endswith(("running_mean", "running_var")):
            assert same, name  # --freeze encoder, and BatchNorm frozen (the fine-tune default)
    assert not torch.equal(last["head_final.weight"], first["head_final.weight"])


def test_a_run_folder_or_its_training_checkpoint_can_be_the_start(finetuned):
    run, _ = finetuned
    for weights, file in ((run, "best.safetensors"), (run / "checkpoints" / "last.ckpt", None)):
        config, _, taken = finetune_config({"weights": str(weights)})
        assert taken["image_size"] == 32 and config.precise_bn == "frozen"
        path, state = read_start(config)
        assert path.name == (file or "last.ckpt") and config.start_weights["file"] == path.name
        load_start(MSRFNet(), path, state)


def test_a_finetune_resumes_without_a_second_start(finetuned, tmp_path):
    import shutil

    run = tmp_path / "ft"
    shutil.copytree(finetuned[0], run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--max-minutes", "10"]) == 0
    assert [r["epoch"] for r in _history(run)] == ["0", "1", "2"]


def test_the_cli_and_the_function_share_one_path(data, start, tmp_path, monkeypatch):
    """``msrf train --weights`` and ``msrfnet.finetune`` on the same dataset folder make the same
    config and hand it to the same ``train``."""
    seen: list[Config] = []
    monkeypatch.setattr(finetune_module, "train", lambda c: seen.append(c) or tmp_path)
    assert main(_args(data, tmp_path, "x", "--weights", str(start))) == 0
    finetune_run(data, weights=str(start), out=str(tmp_path), name="x", epochs=1, batch_size=2)
    cli, python = seen
    python.workers = cli.workers  # the CLI's --workers 0
    python.max_minutes = cli.max_minutes  # and --max-minutes 10
    assert cli == python and cli.lr == 5e-5 and cli.data == str(data)


def _arrays(n: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` sample images, and their masks as uint16 instance label images."""
    from skimage.measure import label

    files = sorted((sample_root() / "train" / "images").glob("*.png"))[:n]
    images = [read_image(f) for f in files]
    masks = [
        label(read_mask(sample_root() / "train" / "masks" / f.name)).astype(np.uint16)
        for f in files
    ]
    return images, masks


def test_finetune_from_arrays_returns_a_segmenter_of_a_run(start, tmp_path):
    images, masks = _arrays()
    assert all(m.dtype == np.uint16 and m.max() > 2 for m in masks)  # label images
    out = tmp_path / "runs"
    seg = msrfnet.finetune(
        images,
        masks,
        weights=start,
        val_fraction=0.5,
        out=out,
        name="py",
        epochs=1,
        batch_size=2,
        workers=0,
    )
    assert isinstance(seg, msrfnet.Segmenter) and seg.weights == out / "py" / "best.safetensors"
    assert seg(images[0]).mask.shape == images[0].shape[:2]
    config = yaml.safe_load((out / "py" / "config.yaml").read_text())
    data = Path(config["data"])
    assert data.parent.name == finetune_module.FINETUNE_FOLDER  # msrfnet's cache, not a user's
    assert len(list((data / "train" / "images").iterdir())) == 2
    assert len(list((data / "val" / "masks").iterdir())) == 2
    assert [r["epoch"] for r in _history(out / "py")] == ["0", "1"]


def test_finetune_from_folders_writes_nothing_among_them(data, start, tmp_path, monkeypatch):
    seen: list[Config] = []
    monkeypatch.setattr(finetune_module, "train", lambda c: seen.append(c) or tmp_path)
    images, masks = data / "train" / "images", data / "train" / "masks"
    before = {p: _stamp(p) for p in data.rglob("*") if p.is_file()}
    finetune_run(images, masks, weights=str(start), epochs=1)
    finetune_run(data / "train", weights=str(start), epochs=1)  # a folder with images/, masks/
    first, second = (Path(c.data) for c in seen)
    assert first == second and first.parent.name == "finetune"  # the same images: one folder
    assert not first.is_relative_to(data)
    assert {p: _stamp(p) for p in data.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda img, m: finetune_run([img], [m]), "1 image(s): a fine-tune needs at least 2"),
        (lambda img, m: finetune_run([img, img], [m]), "2 images but 1 masks"),
        (lambda img, m: finetune_run([img, 3], [m, m]), "image: a int; pass numpy arrays"),
        (lambda img, m: finetune_run(sample_root(), [m]), "a dataset folder (train/, val/)"),
    ],
)
def test_finetune_refusals_are_one_line(call, message):
    images, masks = _arrays(1)
    with pytest.raises(MSRFError) as info:
        call(images[0], masks[0])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_finetune_takes_only_train_options():
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochz'"):
        finetune_run([], [], epochz=3)
    with pytest.raises(TypeError, match="'data'"):
        finetune_run([], [], data="x")
