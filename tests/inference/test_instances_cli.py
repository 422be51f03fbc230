"""Objects from ``msrf predict --instances`` and ``Segmenter(instances=True)``: label TIFFs,
object CSVs, the per-image counts, and the output-folder rules."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import tifffile
from _model_helpers import make_weights, use_runner, write_image

from msrfnet.cli import build_parser, main
from msrfnet.errors import MSRFError
from msrfnet.inference.predict import predict
from msrfnet.inference.predict_files import OBJECTS_SUMMARY
from msrfnet.inference.segmenter import Segmenter
from msrfnet.option_groups import MIN_SIZE, SEED_DISTANCE, Objects, Outputs

SIZE = 32


def red_runner(images, canny):
    """A stand-in network: the probability is the red channel / 255 (B×3×S×S → B×S×S)."""
    return images[:, 0].astype(np.float32) / 255


def nuclei(n: int, seed: int = 0) -> np.ndarray:
    """A 32×32 RGB image of ``n`` nuclei (radius 5) in red; with n ≥ 2 the first two touch."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centres = [(10, 9), (10, 18), (24, 24), (24, 8)][:n]
    red = np.zeros((SIZE, SIZE), np.uint8)
    for cy, cx in centres:
        red[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 255
    rng = np.random.default_rng(seed)
    green = rng.integers(0, 100, (SIZE, SIZE), dtype=np.uint8)
    return np.dstack([red, green, np.zeros_like(red)])


@pytest.fixture
def fake_backend(monkeypatch):
    """msrf predict with :func:`red_runner` at 32² instead of a loaded model."""
    opened = []
    use_runner(monkeypatch, red_runner, SIZE, calls=opened)
    return opened


@pytest.fixture
def folder(tmp_path):
    for n in (1, 2, 4):
        write_image(tmp_path / "in" / f"n{n}.png", nuclei(n, seed=n))
    return tmp_path / "in"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_segmenter_instances_split_touching_nuclei():
    seg = Segmenter(red_runner, image_size=SIZE)
    plain = seg(nuclei(2))
    assert plain.labels is None and plain.objects is None
    both = seg(nuclei(2), instances=True)  # per call
    assert both.labels.dtype == np.uint16 and both.labels.shape == (SIZE, SIZE)
    assert int(both.labels.max()) == 2 and len(both.objects) == 2
    assert np.array_equal(both.labels > 0, both.mask)  # nothing of the mask lost
    assert {o["label"] for o in both.objects} == {1, 2}
    assert all(60 < o["area"] < 100 for o in both.objects)  # discs of radius 5: 81 px
    # the default comes from the constructor; min_size drops every object here
    assert int(Segmenter(red_runner, image_size=SIZE, instances=True)(nuclei(4)).labels.max()) == 4
    tiny = Segmenter(red_runner, image_size=SIZE, instances=True, min_size=200)(nuclei(2))
    assert tiny.labels.max() == 0 and tiny.objects == []
    with pytest.raises(MSRFError, match="seed_distance 0"):
        Segmenter(red_runner, image_size=SIZE, seed_distance=0)


def test_predict_instances_writes_labels_objects_and_counts(fake_backend, folder, tmp_path):
    out = tmp_path / "out"
    written = predict([folder], objects=Objects(), outputs=Outputs(out=out))
    assert sorted(p.name for p in written) == ["n1.png", "n2.png", "n4.png"]
    for n in (1, 2, 4):
        labels = tifffile.imread(out / f"n{n}_labels.tif")
        mask = np.asarray(cv2.imread(str(out / f"n{n}.png"), 0))
        assert labels.dtype == np.uint16 and labels.shape == (SIZE, SIZE)
        assert int(labels.max()) == n and np.array_equal(labels > 0, mask == 255)
        rows = read_csv(out / f"n{n}_objects.csv")
        assert len(rows) == n and list(rows[0])[:3] == ["label", "area", "centroid_row"]
        for row in rows:  # the CSV measures the label image
            obj = labels == int(row["label"])
            assert int(row["area"]) == int(obj.sum())
            assert float(row["centroid_row"]) == pytest.approx(np.argwhere(obj)[:, 0].mean(), 0.01)
            assert int(row["bbox_top"]) == np.argwhere(obj)[:, 0].min()
            grey = nuclei(n, seed=n).mean(axis=2)  # the mean over the RGB channels
            assert float(row["mean_intensity"]) == pytest.approx(grey[obj].mean(), abs=1e-3)
            assert 0 <= float(row["eccentricity"]) < 1 and 0 < float(row["solidity"]) <= 1
    assert read_csv(out / OBJECTS_SUMMARY) == [
        {"stem": "n1", "count": "1"},
        {"stem": "n2", "count": "2"},
        {"stem": "n4", "count": "4"},
    ]


def test_empty_image_has_a_header_only_csv_and_count_zero(fake_backend, tmp_path):
    write_image(tmp_path / "in" / "dark.png", np.zeros((20, 24, 3), np.uint8))
    predict([tmp_path / "in"], objects=Objects(), outputs=Outputs(out=tmp_path / "out"))
    assert (tmp_path / "out" / "dark_objects.csv").read_text().startswith("label,area,")
    assert read_csv(tmp_path / "out" / "dark_objects.csv") == []
    assert tifffile.imread(tmp_path / "out" / "dark_labels.tif").shape == (20, 24)
    assert read_csv(tmp_path / "out" / OBJECTS_SUMMARY) == [{"stem": "dark", "count": "0"}]


def test_overwrite_and_skip_existing_keep_the_summary_whole(fake_backend, folder, tmp_path):
    out = tmp_path / "out"
    predict([folder / "n1.png", folder / "n2.png"], objects=Objects(), outputs=Outputs(out=out))
    with pytest.raises(MSRFError, match="--overwrite to replace or --skip-existing"):
        predict([folder], objects=Objects(), outputs=Outputs(out=out))
    opened = len(fake_backend)
    written = predict([folder], objects=Objects(), outputs=Outputs(out=out, skip_existing=True))
    assert [p.name for p in written] == ["n4.png"] and len(fake_backend) == opened + 1
    # the kept images' counts come from their CSVs: the summary covers the whole folder
    assert [r["count"] for r in read_csv(out / OBJECTS_SUMMARY)] == ["1", "2", "4"]
    predict([folder], objects=Objects(min_size=200), outputs=Outputs(out=out, overwrite=True))
    assert [r["count"] for r in read_csv(out / OBJECTS_SUMMARY)] == ["0", "0", "0"]


def test_a_foreign_summary_is_never_replaced(fake_backend, folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / OBJECTS_SUMMARY).write_text("the user's own table\n")
    with pytest.raises(MSRFError, match="objects_summary.csv: exists and is a file msrf did not"):
        predict([folder], objects=Objects(), outputs=Outputs(out=out, overwrite=True))
    assert not fake_backend  # refused before the model loads
    assert (out / OBJECTS_SUMMARY).read_text() == "the user's own table\n"
    assert not (out / "n1_labels.tif").exists()


def test_cli_options_and_help(tmp_path, capsys):
    text = build_parser().parse_args(["predict", "x", "--instances"])
    assert (text.min_size, text.seed_distance) == (MIN_SIZE, SEED_DISTANCE)
    for bad in (["--seed-distance", "0"], ["--min-size", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["predict", "x", "--instances", *bad])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default {MIN_SIZE}," in help_text and f"(default {SEED_DISTANCE}," in help_text


def test_cli_with_real_weights(tmp_path):
    weights = make_weights(tmp_path / "w.safetensors", image_size=32)
    write_image(tmp_path / "in" / "a.png", nuclei(4))
    args = [
        "predict",
        str(tmp_path / "in"),
        "--weights",
        str(weights),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--instances", "--min-size", "0"]) == 0
    labels = tifffile.imread(tmp_path / "o" / "a_labels.tif")
    mask = cv2.imread(str(tmp_path / "o" / "a.png"), 0)
    assert labels.shape == mask.shape == (SIZE, SIZE)
    assert np.array_equal(labels > 0, mask == 255)  # min_size 0: every mask pixel in an object
    count = int(read_csv(tmp_path / "o" / OBJECTS_SUMMARY)[0]["count"])
    assert count == int(labels.max()) == len(read_csv(tmp_path / "o" / "a_objects.csv"))
