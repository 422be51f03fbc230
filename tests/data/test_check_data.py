"""``check_data`` (every bad-input case and its message), ``split_dataset``, the real data sets."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import blob_pair, make_dataset, save
from _shared import require_fixture
from PIL import Image

from msrfnet.data.check import check_data
from msrfnet.data.root import resolve_data_root, sample_root
from msrfnet.data.split import split_dataset
from msrfnet.errors import MSRFError


def test_clean_dataset_passes_with_summary_table(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    report = check_data(root)
    assert report.ok and report.problems == []
    assert {k: s.pairs for k, s in report.splits.items()} == {"train": 4, "val": 2, "test": 2}
    text = report.format()
    assert text.splitlines()[0].startswith(f"check-data {root}: OK (8 image/mask pairs")
    table = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert table["split"][:3] == ["split", "folder", "pairs"]
    assert table["train"][1:5] == ["train/", "4", "40x48", "40x48"]
    fg = np.mean([f for f in report.splits["train"].foreground])
    assert table["train"][5] == f"{100 * fg:.2f}%"


def test_valid_folder_is_accepted_and_both_is_a_problem(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "valid": 1, "test": 1})
    report = check_data(root)
    assert report.ok and report.splits["val"].folder == "valid"
    make_dataset(root, {"val": 1})
    assert check_data(root).problems == ["val/ and valid/: both exist; keep one (val/ is checked)"]


def test_missing_split_and_subfolder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1})
    shutil.rmtree(root / "val" / "masks")
    problems = check_data(root).problems
    assert problems == [
        "val/masks/: folder missing",
        "test/: split folder missing (expected test/images/ and test/masks/)",
    ]
    assert (
        "val/ (or valid/): split folder missing" in check_data(tmp_path / "d" / "train").problems[1]
    )


def test_missing_root(tmp_path: Path) -> None:
    report = check_data(tmp_path / "nope")
    assert not report.ok and report.problems == [f"{tmp_path / 'nope'}: dataset folder not found"]


def test_empty_split(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 0})
    assert check_data(root).problems == ["test/: empty split (no image/mask pairs)"]


def test_unpaired_files(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 3, "val": 1, "test": 1})
    (root / "train/masks/s001.png").unlink()
    (root / "test/images/s000.png").rename(root / "test/images/other.png")
    problems = check_data(root).problems
    assert problems == [
        "train/images/s001.png: no mask with stem 's001' in train/masks/",
        "test/images/other.png: no mask with stem 'other' in test/masks/",
        "test/masks/s000.png: no image with stem 's000' in test/images/",
        "test/: empty split (no image/mask pairs)",
    ]


def _corrupt_bytes(kind: str) -> bytes:
    if kind == "zero":
        return b""
    if kind == "text":
        return b"this is not a PNG\n"
    image, _ = blob_pair(64, 64)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG" if kind == "png" else "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize(
    ("kind", "rel", "message"),
    [
        ("zero", "train/images/s000.png", "empty file (0 bytes)"),
        ("text", "train/masks/s001.png", "not a readable image file"),
        ("png", "val/images/s000.png", "corrupt or truncated image (image file is truncated)"),
        ("jpeg", "test/masks/s000.jpg", "corrupt or truncated image (image file is truncated"),
    ],
)
def test_unreadable_files(tmp_path: Path, kind: str, rel: str, message: str) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    target = root / rel
    for old in target.parent.glob(f"{target.stem}.*"):
        old.unlink()
    target.write_bytes(_corrupt_bytes(kind))
    report = check_data(root)
    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(f"{rel}: {message}")
    assert f"problem: {rel}: " in report.format()


def test_size_mismatch(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    save(root / "val/masks/s000.png", np.zeros((30, 48), np.uint8))
    assert check_data(root).problems == [
        "val/masks/s000.png: size 30x48 differs from its image val/images/s000.png (40x48, HxW)"
    ]


def test_label_map_mask_with_and_without_threshold(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    labels = np.repeat(np.arange(4, dtype=np.uint8), 40 * 12).reshape(40, 48)
    save(root / "train/masks/s001.png", labels)
    problems = check_data(root).problems
    assert len(problems) == 1 and problems[0].startswith(
        "train/masks/s001.png: looks like a label map"
    )
    assert "mask_threshold" in problems[0]
    report = check_data(root, mask_threshold=0)
    assert report.ok
    assert report.splits["train"].foreground[1] == pytest.approx(0.75)


def test_instance_label_masks_are_stated_with_their_objects(tmp_path: Path) -> None:
    """Issue 21, item 5: 16-bit instance label images pass without --mask-threshold, and one
    note says that the masks are label images and how many objects they hold."""
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    labels = np.zeros((40, 48), np.uint16)
    labels[2:8, 2:8], labels[20:30, 10:20], labels[30:35, 40:46] = 1, 2, 7
    for name in ("train/masks/s000.png", "train/masks/s001.png"):
        (root / name).unlink()
        save(root / name.replace(".png", ".tif"), labels)
    report = check_data(root)
    assert report.ok, report.problems
    line = (
        "masks: 2 of 4 are instance label images (16-bit ids, 0 = background), 6 objects in "
        "all; foreground = label > 0"
    )
    assert report.notes == [line] and f"note: {line}" in report.format()
    assert report.splits["train"].foreground == [pytest.approx((labels > 0).mean())] * 2
    assert check_data(root, mask_threshold=0).notes == []  # a threshold: the masks are values
    labels8 = labels.astype(np.uint8)  # 8-bit ids keep the label-map refusal
    save(root / "train/masks/s000.tif", labels8)
    problems = check_data(root).problems
    assert len(problems) == 1 and "looks like a label map" in problems[0]


def test_non_image_files_are_notes_not_problems(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1})
    (root / "train/images/README.txt").write_text("hi")
    report = check_data(root)
    assert report.ok and report.notes == ["train/images/: 1 non-image file(s) skipped: README.txt"]


def test_pairs_by_stem_with_different_extensions(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "d", {"train": 2, "val": 1, "test": 1}, image_ext=".jpg", mask_ext=".PNG"
    )
    assert check_data(root).ok


def test_bundled_sample_passes() -> None:
    report = check_data(sample_root())
    assert report.ok, report.format()
    assert {k: s.pairs for k, s in report.splits.items()} == {"train": 20, "val": 5, "test": 5}
    assert {hw for s in report.splits.values() for hw in s.sizes} == {(256, 256)}
    size = sum(p.stat().st_size for p in sample_root().rglob("*") if p.is_file())
    assert size < 3e6


def test_resolve_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root, message = resolve_data_root(None)
    assert root == sample_root() and "bundled 2018 DSB sample (20/5/5 images)" in message
    (tmp_path / "data" / "kdsb").mkdir(parents=True)
    assert resolve_data_root(None)[0] == Path("data/kdsb")
    assert resolve_data_root(str(tmp_path))[0] == tmp_path
    with pytest.raises(MSRFError, match="nope: dataset folder not found"):
        resolve_data_root("nope")


def test_kdsb_passes() -> None:
    root = require_fixture("data/kdsb")
    report = check_data(root)
    assert report.ok, report.format()
    assert {k: s.pairs for k, s in report.splits.items()} == {"train": 536, "val": 67, "test": 67}


# ---------------------------------------------------------------- split_dataset


def _flat(src: Path, n: int) -> Path:
    for i in range(n):
        image, mask = blob_pair(20, 24, seed=i)
        save(src / "images" / f"im{i:02d}{'.jpg' if i % 3 == 0 else '.png'}", image)
        save(src / "masks" / f"im{i:02d}.png", mask)
    return src


def test_split_dataset_and_reuse_splits_json(tmp_path: Path) -> None:
    src = _flat(tmp_path / "flat", 20)
    lists = split_dataset(src, tmp_path / "a", val=0.1, test=0.1, seed=7)
    assert [len(lists[k]) for k in ("train", "val", "test")] == [16, 2, 2]
    assert sorted(sum(lists.values(), [])) == sorted(p.name for p in (src / "images").iterdir())
    record = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert record["seed"] == 7 and record["splits"]["val"]["images"] == lists["val"]
    assert check_data(tmp_path / "a").ok
    assert split_dataset(src, tmp_path / "b", seed=7) == lists  # deterministic
    assert split_dataset(src, tmp_path / "c", seed=8) != lists
    again = split_dataset(src, tmp_path / "d", splits_json=tmp_path / "a" / "splits.json")
    assert again == lists
    assert sorted(p.name for p in (tmp_path / "d" / "test" / "masks").iterdir()) == sorted(
        record["splits"]["test"]["masks"]
    )


def test_split_dataset_errors(tmp_path: Path) -> None:
    src = _flat(tmp_path / "flat", 6)
    split_dataset(src, tmp_path / "a")
    with pytest.raises(MSRFError, match="already exists and is not empty"):
        split_dataset(src, tmp_path / "a")
    with pytest.raises(MSRFError, match="each must be in"):
        split_dataset(src, tmp_path / "b", val=0.6, test=0.5)
    (src / "masks" / "im01.png").unlink()
    with pytest.raises(MSRFError, match=r"images/im01.png: no mask with stem 'im01'"):
        split_dataset(src, tmp_path / "c")
    for image in (src / "images").glob("im01.*"):
        image.unlink()
    with pytest.raises(MSRFError, match=r"file\(s\) not in the source"):
        split_dataset(src, tmp_path / "d", splits_json=tmp_path / "a" / "splits.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(MSRFError, match="bad.json: not a readable splits file"):
        split_dataset(src, tmp_path / "e", splits_json=bad)
