"""``msrfnet.finetune``: a fine-tune from Python, on images in memory, files or a folder.

Images that are not a dataset folder already (``train/`` and ``val/``) become one: a copy of the
files, and arrays as TIFF files keeping their dtype, in msrfnet's own cache folder
(``<cache root>/finetune/<digest of the content>/``, the cache root being ``cache_dir`` or the
user's cache folder: never among the user's files; the same images reuse the same folder, and a
resumed run finds it again). Without ``val``, a seeded ``val_fraction`` of the pairs is held apart
for validation; ``test/`` repeats the validation pairs (the layout wants one; these images are
not held apart from model selection: evaluate on others). Then the run is exactly ``msrf train
--data D --weights W``: :func:`msrfnet.train.start.finetune_config` and
:func:`msrfnet.train.fit.train`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import platformdirs

from msrfnet.config import OPTIONS
from msrfnet.data.files import pair_files
from msrfnet.data.layout import split_candidates
from msrfnet.errors import MSRFError
from msrfnet.safe_output import file_digest
from msrfnet.train.fit import train
from msrfnet.train.start import describe, finetune_config

__all__ = [
    "Images",
    "FINETUNE_FOLDER",
    "is_dataset",
    "prepare_dataset",
    "finetune_run",
    "train_from_weights",
]

log = logging.getLogger("msrfnet")

#: Images or masks: a folder, or a list of arrays and/or file paths.
Images = Union[str, os.PathLike, Sequence[Union[np.ndarray, str, os.PathLike]]]
#: The folder under the cache root that holds the datasets made here.
FINETUNE_FOLDER = "finetune"
_NOT_OPTIONS = ("data", "weights", "start_weights")

Item = Union[np.ndarray, Path]
Sample = tuple[str, Item, Item]  # stem, image, mask


def is_dataset(folder: Path) -> bool:
    """A dataset folder of the original layout (``train/`` and ``val/`` or ``valid/``)."""
    return bool(split_candidates(folder, "train")) and bool(split_candidates(folder, "val"))


def _folder_samples(images: Path, masks: Images | None, mask_suffix: str) -> list[Sample]:
    """The pairs of a folder of images and a folder of masks (or one folder holding both as
    ``images/`` and ``masks/``), by file stem; a pairing problem is one line."""
    if masks is None and (images / "images").is_dir() and (images / "masks").is_dir():
        images, masks = images / "images", images / "masks"
    if masks is None or not Path(masks).is_dir():
        raise MSRFError(
            f"{images}: a folder of images needs masks=FOLDER (or holds images/ and masks/, or is "
            "a dataset with train/ and val/)"
        )
    pairing = pair_files(images, Path(masks), mask_suffix=mask_suffix)
    if pairing.problems:
        more = len(pairing.problems) - 1
        raise MSRFError(pairing.problems[0] + (f" (and {more} more problems)" if more else ""))
    return [(p.stem, p.image, p.mask) for p in pairing.pairs]


def _item(value: Any, what: str) -> Item:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise MSRFError(f"{path}: {what} file not found")
        return path
    raise MSRFError(f"{what}: a {type(value).__name__}; pass numpy arrays or file paths")


def _samples(images: Images, masks: Images | None, mask_suffix: str = "") -> list[Sample]:
    """``images`` and ``masks`` as (stem, image, mask) triples."""
    if isinstance(images, str | os.PathLike):
        return _folder_samples(Path(images), masks, mask_suffix)
    if isinstance(masks, str | os.PathLike) or masks is None:
        raise MSRFError("masks: give a list of masks, one per image, with a list of images")
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise MSRFError(f"{len(images)} images but {len(masks)} masks; give one mask per image")
    out, seen = [], set()
    for i, (image, mask) in enumerate(zip(images, masks)):
        image, mask = _item(image, "image"), _item(mask, "mask")
        stem = image.stem if isinstance(image, Path) else f"image{i:04d}"
        stem = f"{stem}-{i}" if stem in seen else stem
        seen.add(stem)
        out.append((stem, image, mask))
    return out


def _split(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    """A seeded split: ``max(1, round(n·fraction))`` pairs to validation, the rest to train."""
    n = len(samples)
    if n < 2:
        raise MSRFError(
            f"{n} image(s): a fine-tune needs at least 2 (one to train on, one to validate)"
        )
    if not 0 < fraction < 1:
        raise MSRFError(f"val_fraction {fraction}: must lie between 0 and 1")
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    return [s for i, s in enumerate(samples) if i not in val], [samples[i] for i in val]


def _digest(splits: dict[str, list[Sample]]) -> str:
    """SHA-256 of what the dataset folder would hold: names, and each array's or file's bytes."""
    h = hashlib.sha256()
    for split, samples in splits.items():
        for stem, *items in samples:
            h.update(f"{split}/{stem}".encode())
            for item in items:
                if isinstance(item, Path):
                    h.update(f"{item.suffix.lower()}:{file_digest(item)}".encode())
                else:
                    h.update(f"{item.dtype}{item.shape}".encode())
                    h.update(np.ascontiguousarray(item).tobytes())
    return h.hexdigest()


def _write(item: Item, folder: Path, stem: str) -> None:
    """One image or mask into ``folder``: a file copied as it is, an array as TIFF (booleans as
    0/255), its dtype kept."""
    if isinstance(item, Path):
        shutil.copyfile(item, folder / f"{stem}{item.suffix.lower()}")
        return
    import tifffile

    array = np.where(item, np.uint8(255), np.uint8(0)) if item.dtype == bool else item
    tifffile.imwrite(folder / f"{stem}.tif", np.ascontiguousarray(array))


def prepare_dataset(splits: dict[str, list[Sample]], cache_dir: str | None = None) -> Path:
    """The dataset folder of ``splits`` (train, val, test) under the cache root, written once:
    built in a temporary folder and renamed into place; an existing one is reused."""
    base = Path(cache_dir).expanduser() if cache_dir else None
    base = (base or Path(platformdirs.user_cache_dir("msrfnet", appauthor=False))) / FINETUNE_FOLDER
    folder = base / _digest(splits)[:16]
    if folder.is_dir():
        log.info("fine-tune data: %s (made earlier from the same images)", folder)
        return folder
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        for split, samples in splits.items():
            for kind, at in (("images", 1), ("masks", 2)):
                (tmp / split / kind).mkdir(parents=True)
                for sample in samples:
                    _write(sample[at], tmp / split / kind, sample[0])
        try:
            tmp.rename(folder)
        except OSError:  # made by another process meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            if not folder.is_dir():
                raise
    except OSError as e:
        from msrfnet.safe_output import io_error

        raise io_error(e.filename or base, e, "cannot write the fine-tune's dataset") from e
    log.info("fine-tune data: %s", folder)
    return folder


def finetune_run(
    images: Images,
    masks: Images | None = None,
    weights: str | os.PathLike = "shipped",
    *,
    val: tuple[Images, Images] | None = None,
    val_fraction: float = 0.2,
    **options: Any,
) -> Path:
    """Fine-tune ``weights`` on ``images`` and ``masks``; returns the run folder (see
    :func:`msrfnet.finetune`). ``options`` are :class:`~msrfnet.config.Config` fields
    (``epochs=``, ``lr=``, ``out=``, ``name=``, ...), as ``msrf train``'s flags."""
    unknown = sorted(set(options) - set(OPTIONS) | set(options) & set(_NOT_OPTIONS))
    if unknown:
        raise TypeError(f"finetune() got an unexpected keyword argument {unknown[0]!r}")
    given = {k: v for k, v in options.items() if v is not None}
    mask_suffix = given.get("mask_suffix", "")
    if isinstance(images, str | os.PathLike) and is_dataset(Path(images)):
        if masks is not None or val is not None:
            raise MSRFError(
                f"{images}: a dataset folder (train/, val/) holds its masks; pass it alone"
            )
        root = Path(images)
    else:
        samples = _samples(images, masks, mask_suffix)
        if val is not None:
            train_part, val_part = samples, _samples(val[0], val[1], mask_suffix)
        else:
            train_part, val_part = _split(samples, val_fraction, given.get("seed", 42))
        splits = {"train": train_part, "val": val_part, "test": val_part}
        root = prepare_dataset(splits, given.get("cache_dir"))
        given.pop("mask_suffix", None)  # the copies are named by stem
    given.update(data=str(root), weights=str(weights))
    return train_from_weights(given, log.info)


def train_from_weights(given: dict[str, Any], say: Callable[[str], Any]) -> Path:
    """The one path of a fine-tune, ``msrf train --weights`` and :func:`finetune_run` alike: its
    config from the options ``given`` (with ``weights``), the defaults and the weights' values it
    took said in two lines (``say``), then :func:`~msrfnet.train.fit.train`."""
    config, defaults, taken = finetune_config(given)
    if defaults:
        say(f"fine-tune defaults (--weights): {describe(defaults)}")
    say(f"from the weights: {describe(taken)}")
    return train(config)
