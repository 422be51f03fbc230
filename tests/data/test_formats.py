"""Microscopy formats: TIFF / OME-TIFF stacks plane by plane, recursive folders mirrored,
16-bit normalisation recorded at training and applied at inference, ISIC-style mask suffixes."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import tifffile
from _data_helpers import blob_pair, save
from _model_helpers import make_weights, use_runner

from msrfnet.cli import build_parser, main
from msrfnet.cli.train import _explicit
from msrfnet.config import Config
from msrfnet.data import check_data, load_or_build_cache, pair_files, read_image, resize_image
from msrfnet.data.io import PERCENTILES, to_uint8
from msrfnet.errors import MSRFError
from msrfnet.inference.predict import SkippedInputs, predict
from msrfnet.inference.predict_files import OBJECTS_SUMMARY
from msrfnet.inference.segmenter import Segmenter
from msrfnet.inference.stacks import tiff_planes
from msrfnet.option_groups import ModelSource, Objects, Outputs

SIZE = 32


def red_runner(images, canny):
    """A stand-in network: the probability is the red channel / 255."""
    return images[:, 0].astype(np.float32) / 255


def discs(n: int) -> np.ndarray:
    """32×32 uint16 plane with ``n`` separate discs (radius 4) at 1000 on 0."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    plane = np.zeros((SIZE, SIZE), np.uint16)
    for cy, cx in [(8, 8), (8, 24), (24, 8), (24, 24)][:n]:
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = 1000
    return plane


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=SIZE)


@pytest.fixture
def fake_backend(monkeypatch):
    use_runner(monkeypatch, red_runner, SIZE)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- stacks -------------------------------------------------------------------------------------


def test_stacks_are_predicted_plane_by_plane(fake_backend, tmp_path):
    (tmp_path / "in").mkdir()
    stack = np.stack([discs(1), discs(3), discs(0)])
    tifffile.imwrite(tmp_path / "in" / "z.tif", stack, photometric="minisblack")  # 3 pages
    ome = np.stack([np.stack([discs(2), discs(4)]), np.stack([discs(1), discs(2)])])
    tifffile.imwrite(tmp_path / "in" / "cells.ome.tif", ome, ome=True, metadata={"axes": "ZCYX"})
    save(tmp_path / "in" / "single.png", discs(2).astype(np.uint16))
    assert [tiff_planes(tmp_path / "in" / n) for n in ("z.tif", "cells.ome.tif")] == [3, 4]
    out = tmp_path / "out"
    written = predict(
        [tmp_path / "in"],
        objects=Objects(),
        outputs=Outputs(out=out, overlay=True, probabilities=True),
    )
    assert sorted(p.name for p in written) == ["cells.tif", "single.png", "z.tif"]
    mask = tifffile.imread(out / "z.tif")
    assert mask.shape == (3, SIZE, SIZE) and mask.dtype == np.uint8
    assert np.array_equal(mask == 255, stack > 0)  # each plane its own image
    prob = tifffile.imread(out / "z_prob.tif")
    assert prob.dtype == np.uint16 and prob.shape == (3, SIZE, SIZE)
    overlay = tifffile.imread(out / "z_overlay.tif")
    assert overlay.shape == (3, SIZE, SIZE, 3) and overlay.dtype == np.uint8
    labels = tifffile.imread(out / "z_labels.tif")
    assert [int(p.max()) for p in labels] == [1, 3, 0]  # labelled per plane
    rows = read_csv(out / "z_objects.csv")
    assert list(rows[0])[:2] == ["plane", "label"]
    assert [r["plane"] for r in rows] == ["0", "1", "1", "1"]
    # the OME stack keeps its plane axes (Z, C) in a plain shaped TIFF named without .ome
    with tifffile.TiffFile(out / "cells_labels.tif") as tif:
        assert tif.series[0].shape == (2, 2, SIZE, SIZE) and tif.series[0].axes.startswith("ZC")
    assert [
        int(p.max()) for p in tifffile.imread(out / "cells_labels.tif").reshape(4, SIZE, SIZE)
    ] == [2, 4, 1, 2]
    counts = {r["stem"]: r["count"] for r in read_csv(out / OBJECTS_SUMMARY)}
    assert counts == {"cells": "9", "single": "2", "z": "4"}


def test_stack_equals_its_planes_with_a_real_model(weights, tmp_path):
    planes = []
    for seed in range(3):
        image, _ = blob_pair(40, 48, seed=seed)
        planes.append((image[:, :, 0].astype(np.uint16) * 37 + 500).astype(np.uint16))
    (tmp_path / "stack").mkdir()
    tifffile.imwrite(tmp_path / "stack" / "s.tif", np.stack(planes), photometric="minisblack")
    for k, plane in enumerate(planes):
        save(tmp_path / "single" / f"p{k}.png", plane)
    predict(
        [tmp_path / "stack"],
        model=ModelSource(weights=weights, exact=True),
        outputs=Outputs(out=tmp_path / "o1"),
    )
    predict(
        [tmp_path / "single"],
        model=ModelSource(weights=weights, exact=True),
        outputs=Outputs(out=tmp_path / "o2"),
    )
    stacked = tifffile.imread(tmp_path / "o1" / "s.tif")
    for k in range(3):
        alone = np.asarray(cv2.imread(str(tmp_path / "o2" / f"p{k}.png"), 0))
        assert np.array_equal(stacked[k], alone)
    assert 0 < (stacked == 255).mean() < 1


def test_a_broken_stack_is_named_and_skipped(fake_backend, tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(
        tmp_path / "in" / "good.tif", np.stack([discs(1), discs(2)]), photometric="minisblack"
    )
    data = (tmp_path / "in" / "good.tif").read_bytes()
    (tmp_path / "in" / "cut.tif").write_bytes(data[: len(data) // 2] + data[-200:])
    nan = np.stack([discs(1), discs(2)]).astype(np.float32)
    nan[1, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "in" / "nan.tif", nan, photometric="minisblack")
    with pytest.raises(SkippedInputs) as skipped:
        predict([tmp_path / "in"], outputs=Outputs(out=tmp_path / "out"))
    assert [p.name for p in skipped.value.written] == ["good.tif"]
    assert len(skipped.value.failures) == 2 and "cut.tif" in skipped.value.failures[0]
    assert "nan.tif plane 1" in skipped.value.failures[1] and "NaN" in skipped.value.failures[1]
    assert not (tmp_path / "out" / "nan.tif").exists()
    with pytest.raises(MSRFError, match="nan.tif plane 1"):
        predict([tmp_path / "in" / "nan.tif"], outputs=Outputs(out=tmp_path / "out2"))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


# --- recursive folders --------------------------------------------------------------------------


def test_recursive_folders_mirror_the_tree(fake_backend, weights, tmp_path):
    src = tmp_path / "in"
    for rel, n in (("a.png", 1), ("plate1/b.png", 2), ("plate1/A/c.png", 3), (".hidden/d.png", 1)):
        save(src / rel, discs(n))
    flat = predict([src], outputs=Outputs(out=tmp_path / "flat"))
    assert [p.name for p in flat] == ["a.png"]  # the default: the files directly inside
    out = tmp_path / "out"
    written = predict([src], objects=Objects(), outputs=Outputs(out=out, recursive=True))
    assert [p.relative_to(out).as_posix() for p in written] == [
        "a.png",
        "plate1/A/c.png",
        "plate1/b.png",
    ]
    assert tifffile.imread(out / "plate1" / "A" / "c_labels.tif").max() == 3
    assert [r["stem"] for r in read_csv(out / OBJECTS_SUMMARY)] == ["a", "plate1/A/c", "plate1/b"]
    save(src / "plate1" / "new.png", discs(4))
    again = predict(
        [src], objects=Objects(), outputs=Outputs(out=out, skip_existing=True, recursive=True)
    )
    assert [p.relative_to(out).as_posix() for p in again] == ["plate1/new.png"]
    assert len(read_csv(out / OBJECTS_SUMMARY)) == 4
    with pytest.raises(MSRFError, match="lies inside the input folder"):
        predict([src], outputs=Outputs(out=src / "plate1" / "out", recursive=True))
    (tmp_path / "only_sub" / "x").mkdir(parents=True)
    save(tmp_path / "only_sub" / "x" / "e.png", discs(1))
    with pytest.raises(MSRFError, match="sub-folders: --recursive"):
        predict([tmp_path / "only_sub"], outputs=Outputs(out=tmp_path / "o3"))
    assert (
        main(
            ["predict", str(tmp_path / "only_sub"), "--recursive", "--out", str(tmp_path / "o4")]
            + ["--weights", str(weights)]
        )
        == 0
    )
    assert (tmp_path / "o4" / "x" / "e.png").is_file()


# --- normalisation ------------------------------------------------------------------------------


def hot_pixel_image() -> np.ndarray:
    """16-bit camera data in 100..1099 with one hot pixel at 65535."""
    img = (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) % 1000 + 100).astype(np.uint16)
    img[0, 0] = 65535
    return img


def test_to_uint8_rules():
    img = hot_pixel_image()
    minmax = to_uint8(img)
    assert minmax.max() == 255 and minmax[1:, 1:].max() <= round(999 * 255 / 65435) + 1  # dark
    lo, hi = np.percentile(img.astype(np.float64), PERCENTILES)
    pct = to_uint8(img, "percentile")
    expected = np.rint(np.clip((img - lo) * 255 / (hi - lo), 0, 255)).astype(np.uint8)
    assert np.array_equal(pct, expected) and pct[1:, 1:].max() == 255
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert to_uint8(u8, "percentile") is u8  # 8-bit images are left as they are
    assert not to_uint8(np.full((4, 4), 7.5), "percentile").any()  # constant: zeros
    sparse = np.zeros((50, 50), np.uint16)
    sparse[0, :3] = [10, 20, 30]  # percentiles coincide (0, 0): min-max instead
    assert to_uint8(sparse, "percentile")[0, 2] == 255
    with pytest.raises(MSRFError, match="normalize 'zscore'"):
        to_uint8(img, "zscore")


def test_normalize_recorded_at_training_and_applied_at_inference(weights, tmp_path):
    from msrfnet.model.loading import load_model
    from msrfnet.weights.checkpoint import save_weights

    args = build_parser().parse_args(["train", "--normalize", "percentile"])
    assert _explicit(args)["normalize"] == "percentile"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--normalize", "zscore"])
    with pytest.raises(MSRFError, match="normalize"):
        Config(normalize="zscore").validate()
    plain = weights
    model = load_model(plain)[0]
    pct = tmp_path / "pct.safetensors"
    save_weights(pct, model, Config(image_size=SIZE, normalize="percentile"))
    assert (
        load_model(pct)[1].normalize == "percentile" and load_model(plain)[1].normalize == "minmax"
    )
    img = hot_pixel_image()
    save(tmp_path / "in" / "hot.png", img)
    seg = Segmenter.from_pretrained(pct, device="cpu", exact=True)
    assert seg.normalize == "percentile"
    by_rule = seg(to_uint8(img, "percentile"))  # the same pixels handed over as uint8
    assert np.array_equal(seg(img).probability, by_rule.probability)
    assert not np.array_equal(seg(img).probability, seg(to_uint8(img)).probability)
    predict(
        [tmp_path / "in"],
        model=ModelSource(weights=pct, exact=True),
        outputs=Outputs(out=tmp_path / "o", probabilities=True),
    )
    prob = cv2.imread(str(tmp_path / "o" / "hot_prob.png"), -1) / 65535.0
    assert np.abs(prob - by_rule.probability).max() < 1e-4


def test_the_data_pipeline_applies_the_same_rule(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        image, mask = blob_pair(40, 48, seed=i)
        grey = image[:, :, 0].astype(np.uint16) * 100
        grey[0, 0] = 65535
        save(root / "train" / "images" / f"s{i}.png", grey)
        save(root / "train" / "masks" / f"s{i}.png", mask)
    files = sorted((root / "train" / "images").glob("*.png"))
    minmax = load_or_build_cache(root, "train", SIZE)
    pct = load_or_build_cache(root, "train", SIZE, normalize="percentile")
    assert pct.path != minmax.path  # one cache entry per rule
    for i, f in enumerate(files):
        assert np.array_equal(
            pct.images[i], resize_image(read_image(f, normalize="percentile"), SIZE)
        )
        assert np.array_equal(minmax.images[i], resize_image(read_image(f), SIZE))
    assert not np.array_equal(np.asarray(pct.images), np.asarray(minmax.images))


# --- mask suffix --------------------------------------------------------------------------------


def test_mask_suffix_pairs_isic_names(tmp_path):
    root = tmp_path / "isic"
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for i in range(n):
            image, mask = blob_pair(40, 48, seed=i)
            save(root / split / "images" / f"ISIC_{i:07d}.jpg", image)
            save(root / split / "masks" / f"ISIC_{i:07d}_segmentation.png", mask)
    pairing = pair_files(
        root / "train" / "images", root / "train" / "masks", mask_suffix="_segmentation"
    )
    assert not pairing.problems and [p.stem for p in pairing.pairs] == [
        f"ISIC_{i:07d}" for i in range(3)
    ]
    assert pairing.pairs[0].mask.name == "ISIC_0000000_segmentation.png"
    plain = pair_files(root / "train" / "images", root / "train" / "masks")
    assert not plain.pairs and "no mask with stem 'ISIC_0000000'" in plain.problems[0]
    assert check_data(root, mask_suffix="_segmentation").ok
    assert not check_data(root).ok
    (root / "train" / "masks" / "stray.png").write_bytes(
        (root / "train" / "masks" / "ISIC_0000000_segmentation.png").read_bytes()
    )
    report = check_data(root, mask_suffix="_segmentation")
    assert any("stray.png: name does not end with the mask suffix" in p for p in report.problems)
    (root / "train" / "masks" / "stray.png").unlink()
    cache = load_or_build_cache(root, "train", SIZE, mask_suffix="_segmentation")
    assert cache.mask_files[0].endswith("ISIC_0000000_segmentation.png")
    assert main(["check-data", str(root), "--mask-suffix", "_segmentation"]) == 0
    args = build_parser().parse_args(["train", "--mask-suffix", "_segmentation"])
    assert Config(**_explicit(args)).mask_suffix == "_segmentation"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--mask-suffix", "a/b"])
