"""A corpus of bad files through the three commands that read user images — ``msrf check-data``,
``msrf train`` and ``msrf predict`` — via :func:`msrfnet.cli.main`: each exits non-zero with one
line per problem that names the file, never a traceback.

Corpus: a truncated PNG, a truncated JPEG, a zero-byte file, a text file named ``.png``, a PNG whose
header claims 100000×100000 px (Pillow's decompression-bomb check must refuse it before any
allocation), and unpaired files (an image without a mask, a mask without an image).
``test_check_data.py`` pins the exact message of each unreadable kind through ``check_data``; here
the same kinds go through the command line, all at once, and into ``train`` and ``predict``.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import blob_pair, make_dataset, save
from PIL import Image

from msrfnet.cli import main
from msrfnet.data.cache import cache_folder


def _encoded(fmt: str) -> bytes:
    image, _ = blob_pair(64, 64)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR claiming ``width``×``height`` RGB, a token IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


BAD_BYTES = {
    "truncated-png": (".png", lambda: _encoded("PNG")[: len(_encoded("PNG")) // 2]),
    "truncated-jpeg": (".jpg", lambda: _encoded("JPEG")[: len(_encoded("JPEG")) // 2]),
    "zero-bytes": (".png", lambda: b""),
    "text-as-png": (".png", lambda: b"this is not a PNG\n"),
    "huge-header": (".png", huge_png),
}

# kind -> a fragment the one-line message must hold
EXPECTED = {
    "truncated-png": "truncated",
    "truncated-jpeg": "truncated",
    "zero-bytes": "empty file (0 bytes)",
    "text-as-png": "not a readable image file",
    "huge-header": "too large",
    "image-without-mask": "no mask with stem",
    "mask-without-image": "no image with stem",
}


def _replace(target: Path, kind: str) -> Path:
    """Put the bad bytes of ``kind`` where ``target`` (any extension) was; returns the new path."""
    for old in target.parent.glob(f"{target.stem}.*"):
        old.unlink()
    ext, make = BAD_BYTES[kind]
    path = target.with_suffix(ext)
    path.write_bytes(make())
    return path


@pytest.fixture()
def bad_dataset(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data set with every kind of bad file once; returns (root, {relative path: kind})."""
    root = make_dataset(tmp_path / "d", {"train": 5, "val": 2, "test": 2})
    bad = {}
    for rel, kind in [
        ("train/images/s000", "truncated-png"),
        ("train/masks/s001", "truncated-jpeg"),
        ("train/images/s002", "zero-bytes"),
        ("val/masks/s000", "text-as-png"),
        ("test/images/s000", "huge-header"),
    ]:
        bad[_replace(root / rel, kind).relative_to(root).as_posix()] = kind
    image, mask = blob_pair(40, 48, seed=99)
    save(root / "train/images/lonely.png", image)
    bad["train/images/lonely.png"] = "image-without-mask"
    save(root / "test/masks/orphan.png", mask)
    bad["test/masks/orphan.png"] = "mask-without-image"
    return root, bad


def _one_line_per_problem(lines: list[str], bad: dict[str, str]) -> None:
    for rel, kind in bad.items():
        naming = [line for line in lines if rel in line]
        assert len(naming) == 1, f"{rel} ({kind}): {naming or lines}"
        assert EXPECTED[kind] in naming[0], naming[0]


def test_check_data_reports_each_bad_file_once(bad_dataset, capsys) -> None:
    root, bad = bad_dataset
    assert main(["check-data", str(root)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and err == ""
    problems = [line for line in out.splitlines() if line.startswith("  problem: ")]
    assert len(problems) == len(bad), problems
    _one_line_per_problem(problems, bad)
    assert out.splitlines()[0].startswith(f"check-data {root}: {len(bad)} problems")


def test_train_stops_at_the_data_check(bad_dataset, tmp_path, capsys) -> None:
    root, bad = bad_dataset
    out_dir = tmp_path / "runs"
    args = [
        "train",
        "--data",
        str(root),
        "--out",
        str(out_dir),
        "--name",
        "bad",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--batch-size",
        "2",
        "--workers",
        "0",
    ]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert all(line.startswith("msrf train: error: ") for line in lines), lines
    assert len(lines) == len(bad) + 1  # one per problem, then the summary naming the folder
    _one_line_per_problem(lines[:-1], bad)
    assert str(root) in lines[-1] and f"{len(bad)} problem(s)" in lines[-1]
    # nothing started: no run directory, no cache of pre-processed arrays
    assert not (out_dir / "bad").exists()
    assert not (root / ".msrf_cache").exists() and not cache_folder(root).exists()


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    from msrfnet.config import Config
    from msrfnet.model import MSRFNet
    from msrfnet.weights.checkpoint import save_weights

    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    save_weights(path, MSRFNet(), Config(image_size=16))
    return path


@pytest.mark.parametrize("kind", sorted(BAD_BYTES))
def test_predict_names_the_bad_input(kind, random_weights, tmp_path, capsys) -> None:
    """The bad file is named in one line and skipped, the good ones are written, a summary line
    names it again and the exit status is 1; ``--strict`` stops at it with exit 2."""
    folder = tmp_path / "in"
    for name, seed in (("a_good.png", 1), ("c_good.jpg", 2)):
        save(folder / name, blob_pair(40, 48, seed=seed)[0])
    bad = _replace(folder / "b_bad", kind)
    out_dir = tmp_path / "out"
    code = main(["predict", str(folder), "--weights", str(random_weights), "--out", str(out_dir)])
    assert code == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"skipped {bad}: ") and EXPECTED[kind] in lines[0], lines[0]
    assert lines[1].startswith("msrf predict: error: 1 of 3 image(s)"), lines[1]
    assert str(bad) in lines[1], lines[1]
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["a_good.png", "c_good.png"]
    # the same file named on its own, among good files named one by one (earlier masks replaced)
    good = [str(folder / "a_good.png"), str(folder / "c_good.jpg")]
    args = [good[0], str(bad), good[1], "--weights", str(random_weights), "--out", str(out_dir)]
    assert main(["predict", *args, "--overwrite"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(str(bad) in line for line in lines), lines
    assert main(["predict", *args, "--strict", "--out", str(tmp_path / "strict")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("msrf predict: error: "), lines
    assert str(bad) in lines[0], lines


def test_predict_control_the_good_files_alone_pass(random_weights, tmp_path, capsys) -> None:
    """The control: the same good files alone pass (the failures above are the bad one's)."""
    folder = tmp_path / "in"
    for name, seed in (("a_good.png", 1), ("c_good.jpg", 2)):
        save(folder / name, blob_pair(40, 48, seed=seed)[0])
    assert (
        main(
            [
                "predict",
                str(folder),
                "--weights",
                str(random_weights),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    masks = sorted((tmp_path / "out").glob("*.png"))
    assert [m.name for m in masks] == ["a_good.png", "c_good.png"]
    assert np.asarray(Image.open(masks[0])).shape == (40, 48)
