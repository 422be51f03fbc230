"""Training at native scale (``msrf train --patch-size P [--scale S]``): random crops instead of
resized images, the checkpoint records the mode, and predict/test/Segmenter then tile at that
scale by themselves; the paper's resize protocol stays the default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _logs import said
from _train_helpers import real_subset, train_args

from msrfnet.cli import main
from msrfnet.config import Config
from msrfnet.data import MSRFDataModule, read_image, read_mask
from msrfnet.data.native import NativeDataset, reflect_to
from msrfnet.data.resample import rescale
from msrfnet.inference.predict import predict
from msrfnet.inference.segmenter import Segmenter
from msrfnet.option_groups import ModelSource, Outputs
from msrfnet.weights.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return real_subset(tmp_path_factory.mktemp("kdsb"))


@pytest.fixture(scope="module")
def native_run(data, tmp_path_factory):
    """A 2-epoch run on 32² crops of the native 256² images."""
    out = tmp_path_factory.mktemp("runs")
    args = train_args(data, out, "native", "--patch-size", "32")
    args[args.index("--image-size") : args.index("--image-size") + 2] = []  # the patch decides
    assert main(args) == 0
    return out / "native"


def test_crops_random_in_training_central_in_validation(data):
    train = NativeDataset(data, "train", patch_size=48, random_crop=True)
    val = NativeDataset(data, "val", patch_size=48)
    assert len(train) == 4 and len(val) == 3
    torch.manual_seed(0)
    a, b = train[0], train[0]
    assert a["image"].shape == (3, 48, 48) and a["mask"].shape == a["edge"].shape == (1, 48, 48)
    assert not torch.equal(a["image"], b["image"])  # another place each draw
    c, d = val[1], val[1]
    assert torch.equal(c["image"], d["image"])
    image = read_image(val.image_paths[1])
    y, x = (image.shape[0] - 48) // 2, (image.shape[1] - 48) // 2
    np.testing.assert_array_equal(
        c["image"].numpy().transpose(1, 2, 0), image[y : y + 48, x : x + 48]
    )
    truth = read_mask(val.mask_paths[1])[y : y + 48, x : x + 48]
    np.testing.assert_array_equal(c["mask"][0].numpy().astype(bool), truth)


def test_scale_and_reflection_of_small_images(data):
    ds = NativeDataset(data, "val", patch_size=32, scale=0.1)  # 256² → 26²: reflected to 32²
    image, grey = ds.load(0)
    assert image.shape == (26, 26, 3) and grey.shape == (26, 26)
    np.testing.assert_array_equal(image, rescale(read_image(ds.image_paths[0]), 0.1))
    item = ds[0]
    assert item["image"].shape == (3, 32, 32)
    np.testing.assert_array_equal(
        item["image"].numpy().transpose(1, 2, 0), reflect_to(image, 32, 32)
    )
    padded = reflect_to(np.arange(6).reshape(2, 3), 4, 5)
    np.testing.assert_array_equal(padded[:, 3:], padded[:, [1, 0]])  # mirrored, edge not repeated
    np.testing.assert_array_equal(padded[2:], padded[:2])  # 2 rows: a b | a b


def test_resize_protocol_stays_the_default(data):
    cfg = Config()
    assert cfg.patch_size is None and cfg.scale is None
    dm = MSRFDataModule(Config(image_size=32, batch_size=2, workers=0), data)
    dm.setup("fit")
    assert type(dm.train_set).__name__ == "MSRFDataset"
    native = MSRFDataModule(Config(image_size=32, patch_size=32, batch_size=2, workers=0), data)
    native.setup("fit")
    assert isinstance(native.train_set, NativeDataset) and native.train_set.random_crop
    assert isinstance(native.val_set, NativeDataset) and not native.val_set.random_crop


def test_native_run_records_the_mode_and_predict_tiles(
    native_run, data, tmp_path, caplog, monkeypatch
):
    _, cfg, _ = read_checkpoint(native_run / "best.safetensors")
    assert (cfg.patch_size, cfg.scale, cfg.image_size) == (32, None, 32)
    seg = Segmenter.from_pretrained(native_run, device="cpu", exact=True)
    assert seg.tiled and seg.tile_size == 32 and seg.scale is None
    image = read_image(sorted((data / "test" / "images").iterdir())[0])
    result = seg(image)
    assert result.mask.shape == image.shape[:2]
    with said() as lines:
        written = predict(
            [data / "test" / "images"],
            model=ModelSource(weights=native_run, exact=True),
            outputs=Outputs(out=tmp_path / "pred"),
        )
    assert len(written) == 2 and "tiles of 32²" in lines[-1]
    assert not any("not at native scale" in line for line in lines)  # they were trained so
    np.testing.assert_array_equal(read_mask(written[0]), result.mask)
    # msrf test tiles too, and says so in metrics.json
    assert main(["test", "--data", str(data), "--weights", str(native_run), "--out",
                 str(tmp_path / "t"), "--exact"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["protocol"] == "tiled" and metrics["tile"] == 32
    assert np.isfinite(metrics["dsc"]) and np.isfinite(metrics["orig_dsc"])


def test_resume_refuses_another_patch_or_scale(native_run, capsys):
    for flags in (["--patch-size", "64"], ["--patch-size", "32", "--scale", "0.5"]):
        assert main(["train", "--resume", str(native_run), "--epochs", "3", *flags]) == 2
        assert "cannot change when resuming" in capsys.readouterr().err


def test_cli_refusals(data, tmp_path, capsys):
    base = ["train", "--data", str(data), "--out", str(tmp_path), "--epochs", "1"]
    assert main([*base, "--scale", "0.5"]) == 2
    assert "--patch-size" in capsys.readouterr().err
    assert main([*base, "--patch-size", "32", "--image-size", "64"]) == 2
    assert "the model input is the patch" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a multiple of 8
        main([*base, "--patch-size", "30"])
    assert not any(tmp_path.iterdir())  # nothing written
