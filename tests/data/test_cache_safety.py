"""The pre-processed cache survives corruption and full disks (issue 11, items 6 and 7): a corrupt
entry is noted and rebuilt, the build uses ordinary writes (never a memory map, which dies with
SIGBUS on a full disk), checks the free space first, and a failed build removes its temporary
folder and names the folder and the cause in one line."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from _train_helpers import real_subset

from msrfnet.data import cache as cache_module
from msrfnet.data.cache import load_or_build_cache
from msrfnet.errors import MSRFError

SIZE = 32


@pytest.fixture()
def data(tmp_path):
    return real_subset(tmp_path / "data", {"train": 3, "val": 1, "test": 1})


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: (e / "images.npy").write_bytes(
            (e / "images.npy").read_bytes()[:-100]
        ),  # truncated
        lambda e: (e / "masks.npy").write_bytes(b"\x93NUMPY garbage"),
        lambda e: (e / "meta.json").write_text("{garbage"),
        lambda e: (e / "meta.json").write_text('{"split": "train"}'),  # keys missing
        lambda e: (e / "meta.json").write_text('["a list"]'),
    ],
    ids=["truncated-npy", "garbage-npy", "garbage-meta", "incomplete-meta", "list-meta"],
)
def test_a_corrupt_entry_is_noted_and_rebuilt(data, damage, caplog):
    good = load_or_build_cache(data, "train", SIZE)
    images, masks, entry = np.array(good.images), np.array(good.masks), good.path
    del good
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="msrfnet"):
        again = load_or_build_cache(data, "train", SIZE)
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notes) == 1
    assert notes[0].startswith(f"cache entry unreadable, rebuilding it ({entry}: ")
    assert again.path == entry
    assert np.array_equal(again.images, images) and np.array_equal(again.masks, masks)


def test_arrays_that_disagree_with_meta_are_rebuilt(data, caplog):
    entry = load_or_build_cache(data, "train", SIZE).path
    np.save(entry / "images.npy", np.zeros((2, SIZE, SIZE, 3), np.uint8))  # 2 rows for 3 images
    with caplog.at_level(logging.WARNING, logger="msrfnet"):
        assert load_or_build_cache(data, "train", SIZE).images.shape == (3, SIZE, SIZE, 3)
    assert "do not match 3 images" in caplog.text


def test_the_build_uses_ordinary_writes_not_a_memory_map(data, monkeypatch):
    def no_memmap(*args, **kwargs):
        raise AssertionError("the cache must not be written through a memory map")

    monkeypatch.setattr(np.lib.format, "open_memmap", no_memmap)
    monkeypatch.setattr(np, "memmap", no_memmap)
    pairs = cache_module.split_pairs(data, "train")
    cache_module._build(data / "entry", data, "train", SIZE, pairs, None, 2)
    images = np.load(data / "entry" / "images.npy")
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.uint8 and images.any()


class _FullFile:
    """A file whose writes fail with ENOSPC after ``room`` bytes, as on a full disk."""

    def __init__(self, path: Path, room: int):
        self.f, self.room = open(path, "wb"), room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_during_the_build_is_one_line_and_leaves_nothing(data, monkeypatch):
    monkeypatch.setattr(cache_module, "_npy_writer", lambda path, shape: _FullFile(path, 200))
    cache_root = cache_module.cache_folder(data)
    with pytest.raises(MSRFError) as full:
        load_or_build_cache(data, "train", SIZE)
    assert str(full.value) == f"{cache_root}: cannot write the cache (no space left on device)"
    assert not leftovers(cache_root) and not list(cache_root.glob("train-*"))


def test_a_build_that_cannot_fit_is_refused_before_writing(data, monkeypatch):
    usage = shutil.disk_usage(data)
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(MSRFError, match=r"not enough free space for the cache \(1 MiB needed"):
        load_or_build_cache(data, "train", SIZE)
    assert not list(cache_module.cache_folder(data).glob("*train*"))
    assert not (data / cache_module.LEGACY_CACHE_FOLDER).exists()


def test_building_every_cache_of_a_run_only_reads_the_dataset(data, monkeypatch, tmp_path):
    """What ``msrf train`` builds (``prepare_data``: every split), with the default cache folder:
    no file or folder appears or changes under the data root; the entries are in the user cache."""
    from msrfnet.config import Config
    from msrfnet.data.datamodule import MSRFDataModule

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = {str(p.relative_to(data)): p.stat().st_mtime_ns for p in data.rglob("*")}
    MSRFDataModule(Config(image_size=SIZE, workers=0), data).prepare_data()
    after = {str(p.relative_to(data)): p.stat().st_mtime_ns for p in data.rglob("*")}
    assert after == before
    entries = sorted(p.name.split("-")[0] for p in cache_module.cache_folder(data).iterdir())
    assert entries == ["test", "train", "val"]
    assert cache_module.cache_folder(data).parent == tmp_path / "xdg" / "msrfnet"
