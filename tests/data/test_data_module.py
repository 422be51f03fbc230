"""The pre-processed cache, ``MSRFDataset``, the augmentation preset and ``MSRFDataModule``."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_helpers import blob_pair, make_dataset, save
from PIL import Image
from torch.utils.data import DataLoader, Subset

from msrfnet.config import Config
from msrfnet.data.augment import PresetAugment
from msrfnet.data.cache import LEGACY_CACHE_FOLDER, cache_folder, load_or_build_cache
from msrfnet.data.datamodule import MSRFDataModule
from msrfnet.data.dataset import MSRFDataset
from msrfnet.data.io import read_image, read_mask
from msrfnet.data.preprocess import binarise_grey, canny_map, preprocess_pair
from msrfnet.data.root import sample_root
from msrfnet.errors import MSRFError


@pytest.fixture()
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user cache folder (~/.cache/msrfnet) at a temporary folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "msrfnet"


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "d", {"train": 10, "val": 3, "test": 2})


# ---------------------------------------------------------------- cache


def files_under(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` with its mtime: what a run may not change."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_cache_contents_and_reuse(data: Path, user_cache: Path) -> None:
    before = files_under(data)
    cache = load_or_build_cache(data, "train", 32)
    assert cache.path.parent == cache_folder(data) and cache.path.name.startswith("train-s32-")
    assert cache.path.parent.parent == user_cache and cache.path.parent.name.startswith("d-")
    assert files_under(data) == before  # the dataset is only read
    assert sorted(p.name for p in cache.path.iterdir()) == ["images.npy", "masks.npy", "meta.json"]
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert cache.images.shape == (10, 32, 32, 3) and cache.masks.shape == (10, 32, 32)
    assert cache.images.dtype == cache.masks.dtype == np.uint8
    assert cache.stems == [f"s{i:03d}" for i in range(10)] and cache.original_sizes[0] == (40, 48)
    files = data / "train/images/s004.png", data / "train/masks/s004.png"
    image, grey = preprocess_pair(read_image(files[0]), read_mask(files[1]), 32)
    assert (cache.images[4] == image).all() and (cache.masks[4] == grey).all()
    built = (cache.path / "images.npy").stat().st_mtime_ns
    again = load_or_build_cache(data, "train", 32)
    assert again.path == cache.path and (again.path / "images.npy").stat().st_mtime_ns == built
    assert load_or_build_cache(data, "train", 16).path != cache.path  # size is part of the key


def test_cache_invalidated_when_a_file_changes(data: Path) -> None:
    first = load_or_build_cache(data, "val", 32)
    mask = data / "val/masks/s001.png"
    save(mask, np.zeros((40, 48), np.uint8))  # new content
    second = load_or_build_cache(data, "val", 32)
    assert second.path != first.path and not first.path.exists()  # stale entry removed
    assert second.masks[1].max() == 0 and first.path.parent == second.path.parent
    stamp = time.time() + 10
    os.utime(data / "val/images/s000.png", (stamp, stamp))  # touched only
    third = load_or_build_cache(data, "val", 32)
    assert third.path != second.path
    save(data / "val/images/s009.png", blob_pair()[0])
    save(data / "val/masks/s009.png", blob_pair()[1])
    assert len(load_or_build_cache(data, "val", 32)) == 4
    assert load_or_build_cache(data, "val", 32, mask_threshold=10).path.name != third.path.name


def test_a_read_only_dataset_is_cached_like_any_other(data: Path, user_cache: Path) -> None:
    os.chmod(data, 0o555)
    try:
        cache = load_or_build_cache(data, "test", 32)
    finally:
        os.chmod(data, 0o755)
    assert not (data / LEGACY_CACHE_FOLDER).exists()
    assert cache.path.parent.parent == user_cache and cache.path.parent.name.startswith("d-")


def test_two_datasets_and_a_changed_dataset_never_share_an_entry(
    data: Path, tmp_path: Path, user_cache: Path
) -> None:
    import shutil

    twin = Path(shutil.copytree(data, tmp_path / "twin" / "d"))  # same name, same files
    first, other = load_or_build_cache(data, "val", 32), load_or_build_cache(twin, "val", 32)
    assert first.path.parent != other.path.parent  # keyed by the dataset's path
    assert other.path.parent.parent == user_cache and first.path.exists()
    save(twin / "val/masks/s000.png", np.zeros((40, 48), np.uint8))
    changed = load_or_build_cache(twin, "val", 32)  # keyed by the content
    assert changed.path != other.path and changed.masks[0].max() == 0
    assert load_or_build_cache(data, "val", 32).masks[0].max() > 0


def test_a_legacy_cache_in_the_dataset_is_left_alone_and_noted(
    data: Path, user_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from msrfnet.data.cache import cache_key, split_pairs

    key = cache_key(data, "train", 32, split_pairs(data, "train"), None)
    legacy = data / LEGACY_CACHE_FOLDER / f"train-s32-{key}"  # the very entry, were it read
    legacy.mkdir(parents=True)
    (legacy / "meta.json").write_text("{garbage")  # read, it would be deleted as corrupt
    before = files_under(data)
    with caplog.at_level(logging.INFO, logger="msrfnet"):
        cache = load_or_build_cache(data, "train", 32)
        load_or_build_cache(data, "val", 32)
    assert cache.path.parent.parent == user_cache and files_under(data) == before
    notes = [r.getMessage() for r in caplog.records if "no longer uses" in r.getMessage()]
    assert len(notes) == 1  # once per dataset and process
    assert all(n.startswith(f"{data.resolve() / LEGACY_CACHE_FOLDER}: an old cache") for n in notes)


def test_a_cache_dir_among_the_inputs_is_refused_beside_them_allowed(
    data: Path, tmp_path: Path
) -> None:
    for inside in (data / "train/images", data / "val/masks/sub"):
        with pytest.raises(MSRFError, match=r"^--cache-dir .*: (is|lies inside) the input folder"):
            load_or_build_cache(data, "test", 32, cache_dir=inside)
    assert not (data / "val/masks/sub").exists()
    beside = load_or_build_cache(data, "test", 32, cache_dir=data / "cache")
    assert beside.path.parent.parent == data / "cache"


def test_cache_dir_override_and_bundled_sample(
    data: Path, tmp_path: Path, user_cache: Path
) -> None:
    cache = load_or_build_cache(data, "test", 32, cache_dir=tmp_path / "mine")
    assert (
        cache.path.parent.parent == tmp_path / "mine" and not (data / LEGACY_CACHE_FOLDER).exists()
    )
    sample = load_or_build_cache(sample_root(), "test", 256)
    assert (
        sample.path.parent.parent == user_cache
        and not (sample_root() / LEGACY_CACHE_FOLDER).exists()
    )
    assert sample.images.shape == (5, 256, 256, 3)


def test_cache_build_errors_name_the_file_and_leave_nothing(data: Path, user_cache: Path) -> None:
    (data / "train/images/s003.png").write_bytes(b"")
    with pytest.raises(MSRFError, match=r"^train/images/s003.png: empty file \(0 bytes\)$"):
        load_or_build_cache(data, "train", 32)
    assert list(cache_folder(data).iterdir()) == []
    assert not (data / LEGACY_CACHE_FOLDER).exists()
    (data / "val/masks/s000.png").unlink()
    with pytest.raises(MSRFError, match=r"val/images/s000.png: no mask with stem 's000'"):
        load_or_build_cache(data, "val", 32)


# ---------------------------------------------------------------- dataset


def test_dataset_items(data: Path) -> None:
    cache = load_or_build_cache(data, "train", 32)
    ds = MSRFDataset(cache)
    item = ds[3]
    assert set(item) == {"image", "canny", "mask", "edge", "index"} and item["index"] == 3
    assert item["image"].shape == (3, 32, 32)
    for key in ("canny", "mask", "edge"):
        assert item[key].shape == (1, 32, 32) and set(item[key].unique().tolist()) <= {0, 1}
    for key in ("image", "canny", "mask", "edge"):
        assert item[key].dtype == torch.uint8
    image = np.asarray(cache.images[3])
    assert (item["image"].numpy().transpose(1, 2, 0) == image).all()
    assert (item["canny"][0].numpy() == canny_map(image, 10, 1000)).all()
    assert (item["mask"][0].numpy() == binarise_grey(np.asarray(cache.masks[3]))).all()
    assert (item["edge"][0].numpy() == canny_map(np.asarray(cache.masks[3]), 10, 1000)).all()
    assert item["mask"].sum() > 0 and item["edge"].sum() > 0
    src = ds.source(3)
    assert (
        src.image_path == data / "train/images/s003.png"
        and src.mask_path == data / "train/masks/s003.png"
    )
    assert (src.stem, src.height, src.width) == ("s003", 40, 48)


def test_dataset_pickles_without_its_arrays(data: Path) -> None:
    ds = MSRFDataset(load_or_build_cache(data, "train", 32))
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    assert all((clone[2][k] == ds[2][k]).all() for k in ("image", "canny", "mask", "edge"))


def test_maps_are_computed_after_augmentation(data: Path) -> None:
    def add_square(image: np.ndarray, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image, grey = image.copy(), grey.copy()
        image[8:24, 8:24], grey[8:24, 8:24] = 255, 255
        return image, grey

    item = MSRFDataset(load_or_build_cache(data, "train", 32), augment=add_square)[0]
    assert item["mask"][0, 8:24, 8:24].all() and item["image"][:, 8:24, 8:24].eq(255).all()
    for key in ("canny", "edge"):
        assert item[key][0, 8:24, 8].any() and item[key][0, 8:24, 23].any(), key


def test_preset_moves_image_and_mask_together() -> None:
    _, m = blob_pair(64, 64, seed=4)
    grey = np.asarray(Image.fromarray(m).resize((32, 32)))
    image = np.repeat(grey[..., None], 3, axis=2)
    augment = PresetAugment(seed=0)
    changed = 0
    for _ in range(20):
        out_image, out_grey = augment(image, grey)
        assert (
            out_image.shape == (32, 32, 3)
            and out_grey.shape == (32, 32)
            and out_grey.dtype == np.uint8
        )
        changed += not np.array_equal(out_grey, grey)
        agree = ((out_image[..., 0] >= 128) == (out_grey >= 128)).mean()
        assert agree > 0.97
    assert changed >= 10


def test_workers_draw_different_augmentations(data: Path) -> None:
    ds = MSRFDataset(load_or_build_cache(data, "train", 32), augment=PresetAugment(seed=0))
    loader = DataLoader(
        Subset(ds, [0] * 8), batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    images = [
        b["image"][0] for b in loader
    ]  # worker 0 gives samples 0, 2, 4, 6; worker 1 the others
    assert any(not torch.equal(images[k], images[k + 1]) for k in range(0, 8, 2))


# ---------------------------------------------------------------- datamodule


def _cfg(tmp_path: Path, **kw: object) -> Config:
    return Config(
        **{"image_size": 32, "batch_size": 4, "workers": 0, "cache_dir": str(tmp_path / "c"), **kw}
    )


def test_datamodule_loaders(data: Path, tmp_path: Path) -> None:
    dm = MSRFDataModule(_cfg(tmp_path), data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.test_set is None and len(dm.train_set) == 10 and len(dm.val_set) == 3
    train = dm.train_dataloader()
    batches = list(train)
    assert len(train) == len(batches) == 2  # floor(10 / 4): the remainder is dropped
    assert all(
        b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.uint8 for b in batches
    )
    assert batches[0]["mask"].shape == (4, 1, 32, 32) and batches[0]["index"].dtype == torch.int64
    assert [b["index"].tolist() for b in dm.val_dataloader()] == [
        [0, 1, 2]
    ]  # in order, nothing dropped
    dm.setup("test")
    assert [len(b["index"]) for b in dm.test_dataloader()] == [2]
    other = MSRFDataModule(_cfg(tmp_path), data)
    other.setup("fit")
    first = [b["index"].tolist() for b in other.train_dataloader()]
    assert first == [b["index"].tolist() for b in batches]  # seeded shuffle
    assert sorted(sum(first, [])) != sum(first, [])  # really shuffled (for this seed)


def test_datamodule_options(data: Path, tmp_path: Path) -> None:
    dm = MSRFDataModule(_cfg(tmp_path, workers=1, augment=True), data)
    dm.setup()
    assert isinstance(dm.train_set.augment, PresetAugment) and dm.val_set.augment is None
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.drop_last and not loader.pin_memory
    assert next(iter(loader))["edge"].shape == (4, 1, 32, 32)
    with pytest.raises(
        MSRFError, match="image_size 250: must be a positive multiple of 8.*try 248"
    ):
        MSRFDataModule(_cfg(tmp_path, image_size=250), data)
    small = MSRFDataModule(_cfg(tmp_path, batch_size=16), data)
    small.setup("fit")
    with pytest.raises(MSRFError, match="train split has 10 images, fewer than batch_size 16"):
        small.train_dataloader()
