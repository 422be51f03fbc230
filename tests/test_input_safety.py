"""Inputs that used to surprise silently: NaN/inf in float images, multi-page TIFF masks, a
``--mask-threshold`` that is not finite or outside the masks' values, splits whose masks are all
empty or all full, an unreadable file called corrupt, a garbage ``.ckpt`` called pickled."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import make_dataset, save
from PIL import Image

from msrfnet.cli import main
from msrfnet.data.check import check_data
from msrfnet.data.io import read_image, read_mask
from msrfnet.errors import MSRFError


def _float_tiff(path: Path, bad: float) -> Path:
    array = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    array[3, 4] = bad
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_image_is_an_error_naming_it(tmp_path, bad):
    path = _float_tiff(tmp_path / "scan.tif", bad)
    with pytest.raises(MSRFError, match=r"scan.tif: 1 of 480 pixel values are NaN or infinite"):
        read_image(path)
    clean = _float_tiff(tmp_path / "clean.tif", 0.5)  # the control: a finite float image reads
    assert read_image(clean).max() == 255


def test_non_finite_image_is_a_check_data_problem(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    (root / "train/images/s000.png").unlink()
    _float_tiff(root / "train/images/s000.tif", np.nan)
    report = check_data(root)
    assert len(report.problems) == 1 and report.problems[0].startswith("train/images/s000.tif: ")
    assert "NaN or infinite" in report.problems[0]


def _pages(path: Path, *arrays: np.ndarray) -> Path:
    first, *rest = [Image.fromarray(a) for a in arrays]
    first.save(path, save_all=True, append_images=rest)
    return path


def test_multi_page_tiff_mask_is_refused_an_image_reads_its_first_page(tmp_path):
    empty, full = np.zeros((20, 24), np.uint8), np.full((20, 24), 255, np.uint8)
    mask = _pages(tmp_path / "m.tif", empty, full)
    with pytest.raises(MSRFError, match=r"m.tif: 2 pages \(a multi-page file\); a mask must be a"):
        read_mask(mask)
    assert read_mask(_pages(tmp_path / "one.tif", full)).all()  # the control: one page reads
    image = _pages(tmp_path / "i.tif", full, empty)
    assert (read_image(image) == 255).all()  # the first page, as documented (docs/DATA.md)


def test_multi_page_mask_is_one_check_data_problem(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    (root / "val/masks/s000.png").unlink()
    mask = np.asarray(Image.open(root / "val/images/s000.png").convert("L"))
    _pages(root / "val/masks/s000.tif", mask, mask)
    problems = check_data(root).problems
    assert len(problems) == 1 and problems[0].startswith("val/masks/s000.tif: 2 pages")


@pytest.mark.parametrize("threshold", [float("nan"), float("inf")])
def test_a_non_finite_mask_threshold_is_one_problem_naming_the_option(tmp_path, threshold):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    report = check_data(root, mask_threshold=threshold)
    assert report.problems == [
        f"--mask-threshold {threshold}: must be a finite number (foreground = mask value > T)"
    ]
    with pytest.raises(MSRFError, match="--mask-threshold"):
        read_mask(root / "train/masks/s000.png", mask_threshold=threshold)


def test_cli_refuses_a_non_finite_mask_threshold(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    runs = tmp_path / "runs"
    for command in (["check-data", str(root)], ["train", "--data", str(root), "--out", str(runs)]):
        code = _main_code([*command, "--mask-threshold", "nan"])
        out, err = capsys.readouterr()
        assert code != 0 and "--mask-threshold" in out + err and "Traceback" not in out + err
    assert not runs.exists()  # train stopped before a run folder


def _main_code(argv: list[str]) -> int:
    """main()'s exit status, whether the option is refused by argparse or by the data check."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize(("threshold", "every"), [(255, "empty"), (300, "empty"), (-1, "full")])
def test_a_mask_threshold_outside_the_masks_values_is_a_problem(tmp_path, capsys, threshold, every):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})  # 0/255 masks
    report = check_data(root, mask_threshold=threshold)
    assert report.problems == [
        f"--mask-threshold {threshold:g}: outside the masks' values "
        f"(0 to 255), so every mask would be {every} "
        "(foreground = value > T)"
    ]
    assert check_data(root, mask_threshold=128).ok  # the control: inside the values
    assert check_data(root, mask_threshold=0).ok
    assert main(["check-data", str(root), "--mask-threshold", str(threshold)]) == 1
    assert "problem: --mask-threshold" in capsys.readouterr().out


@pytest.mark.parametrize(("value", "word"), [(0, "empty"), (255, "full")])
def test_a_split_whose_masks_are_all_empty_or_full_is_a_warning(tmp_path, value, word):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 2, "test": 1})
    for mask in (root / "val" / "masks").iterdir():
        save(mask, np.full((40, 48), value, np.uint8))
    report = check_data(root)
    detail = "no foreground" if word == "empty" else "all foreground"
    assert report.ok and report.warnings == [f"val/masks/: every mask is {word} ({detail} in 2)"]
    text = report.format()
    assert ": OK, 1 warning (" in text.splitlines()[0]
    assert f"warning: val/masks/: every mask is {word}" in text
    assert not check_data(make_dataset(tmp_path / "fine")).warnings  # the control


def test_an_unreadable_file_is_not_called_corrupt(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    locked = root / "train/images/s001.png"
    real = Path.read_bytes

    def read_bytes(self):  # a file without read permission (tests run as root, so injected)
        if self == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    problems = check_data(root).problems
    assert problems == ["train/images/s001.png: cannot read the file (permission denied)"]


def test_a_garbage_ckpt_is_not_called_pickled(tmp_path):
    from msrfnet.model.loading import load_model

    garbage = tmp_path / "random.ckpt"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MSRFError) as info:
        load_model(garbage)
    message = str(info.value)
    assert message.startswith(f"{garbage}: not a valid PyTorch checkpoint")
    assert "pickled" not in message
