"""A cache of pre-processed uint8 arrays per (split, image size), so epochs never decode files.

Layout: ``<cache root>/<split>-s<size>-<key>/`` holding ``images.npy`` (N×S×S×3 uint8),
``masks.npy`` (N×S×S uint8, the resized anti-aliased grey masks) and ``meta.json`` (stems, relative
paths, original sizes). The arrays are opened as read-only memory maps.

The key hashes the cache format version, the split, the size, the mask rule (``mask_threshold``),
the image normalisation (``normalize``, :func:`msrfnet.data.io.to_uint8`) and every pair's
relative paths, byte sizes and mtimes, so editing, touching, adding or removing a
file builds a new entry (and the stale one of that split and size is deleted).

Where: ``<cache root>/<name>-<hash of the dataset's resolved path>/``, the cache root being
``cache_dir`` (``--cache-dir``) if given, else the user's cache folder
(``platformdirs.user_cache_dir("msrfnet")``: ``$XDG_CACHE_HOME/msrfnet`` or ``~/.cache/msrfnet``
on Linux). So two datasets never share a folder, and a changed dataset never matches an entry
(the key). The dataset folder is only read: msrf never writes among its inputs, and a
``--cache-dir`` inside a split's ``images/`` or ``masks/`` folder is refused. An old
``<data>/.msrf_cache`` (what earlier versions wrote) is neither read nor deleted; a one-line note
says it can go.
An entry is built in a temporary folder and renamed into place, so a crash or a second process
never sees a half-written cache. The arrays are written with ordinary writes after a check of the
free space (a memory-mapped write would die with SIGBUS on a full disk); a failed build removes its
temporary folder and names the folder and the cause. An entry that fails to load (a truncated
array, a garbled ``meta.json``) is logged, deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from msrfnet.data.files import Pair, display_name
from msrfnet.data.io import read_image, read_mask
from msrfnet.data.layout import SPLITS, split_candidates, split_pairs
from msrfnet.data.preprocess import preprocess_pair
from msrfnet.errors import MSRFError, first_line

__all__ = [
    "CACHE_VERSION",
    "LEGACY_CACHE_FOLDER",
    "SplitCache",
    "cache_folder",
    "cache_key",
    "CorruptEntry",
    "load_or_build_cache",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Where versions before issue 20 put the cache: inside the dataset, among the inputs.
LEGACY_CACHE_FOLDER = ".msrf_cache"


@dataclass
class SplitCache:
    """A loaded cache entry: memory-mapped arrays plus where each sample came from."""

    path: Path
    root: Path
    split: str
    size: int
    images: np.ndarray  # N×S×S×3 uint8 (memory map)
    masks: np.ndarray  # N×S×S uint8 grey, anti-aliased (memory map)
    stems: list[str]
    image_files: list[str]  # relative to root
    mask_files: list[str]
    original_sizes: list[tuple[int, int]]  # H×W before resizing

    def __len__(self) -> int:
        return len(self.stems)


def _user_cache_root() -> Path:
    """The user's cache folder for msrfnet (``$XDG_CACHE_HOME/msrfnet`` on Linux, read at each
    call so that a test can point it elsewhere)."""
    return Path(platformdirs.user_cache_dir("msrfnet", appauthor=False))


def _dataset_folder_name(root: Path) -> str:
    resolved = root.resolve()
    return f"{resolved.name or 'data'}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:10]}"


def _writable(folder: Path) -> bool:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    # Root ignores permission bits, so a probe alone would write into a folder that is marked
    # read-only for everyone (a shared data set); respect the marking.
    if not existing.stat().st_mode & 0o222 or not os.access(existing, os.W_OK):
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def cache_folder(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder of dataset ``root``'s cache entries: ``<cache_dir or the user's cache
    folder>/<name>-<hash of the resolved path>``, never inside the dataset."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else _user_cache_root()
    return base / _dataset_folder_name(Path(root))


def _refuse_among_inputs(root: Path, cache_dir: str | Path) -> None:
    """Refuse, in one line, a ``--cache-dir`` that is or lies inside a split's ``images/`` or
    ``masks/`` folder: its files would lie among the inputs (beside them, in the root, is fine)."""
    from msrfnet.safe_output import refuse_collisions

    inputs = [
        folder / kind
        for split in SPLITS
        for folder in split_candidates(root, split)
        for kind in ("images", "masks")
    ]
    refuse_collisions(cache_dir, input_folders=inputs, option="--cache-dir")


_noted_legacy: set[Path] = set()


def _note_legacy(root: Path, folder: Path) -> None:
    """Say once per dataset that an old ``<data>/.msrf_cache`` is no longer used (msrf neither
    reads it, which could keep a cache among the inputs alive, nor deletes it: only read data)."""
    legacy = root.resolve() / LEGACY_CACHE_FOLDER
    if legacy in _noted_legacy or not legacy.is_dir():
        return
    _noted_legacy.add(legacy)
    log.info(
        "%s: an old cache that msrf no longer uses (it caches in %s); delete it", legacy, folder
    )


def cache_key(
    root: Path,
    split: str,
    size: int,
    pairs: list[Pair],
    mask_threshold: float | None,
    normalize: str = "minmax",
) -> str:
    """Hash of everything the cached arrays depend on (see the module docstring)."""
    h = hashlib.sha256()
    rules = [CACHE_VERSION, split, size, mask_threshold, "lanczos"]
    if normalize != "minmax":  # the keys of existing minmax caches stay as they were
        rules.append(normalize)
    h.update(json.dumps(rules).encode())
    for pair in pairs:
        for path in (pair.image, pair.mask):
            st = path.stat()
            h.update(f"{display_name(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _entry_name(split: str, size: int, key: str) -> str:
    return f"{split}-s{size}-{key}"


def _load(path: Path, root: Path) -> SplitCache:
    """Open an entry; :class:`CorruptEntry` when any part is unreadable or disagrees with the rest
    (a truncated array, a garbled ``meta.json``)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        cache = SplitCache(
            path=path,
            root=root,
            split=meta["split"],
            size=int(meta["size"]),
            images=np.load(path / "images.npy", mmap_mode="r"),
            masks=np.load(path / "masks.npy", mmap_mode="r"),
            stems=list(meta["stems"]),
            image_files=list(meta["image_files"]),
            mask_files=list(meta["mask_files"]),
            original_sizes=[(int(h), int(w)) for h, w in meta["original_sizes"]],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptEntry(f"{path}: {first_line(e)}") from e
    n, s = len(cache.stems), cache.size
    if (cache.images.shape, cache.masks.shape) != ((n, s, s, 3), (n, s, s)) or not (
        len(cache.image_files) == len(cache.mask_files) == len(cache.original_sizes) == n
    ):
        shapes = f"{cache.images.shape}, {cache.masks.shape}"
        raise CorruptEntry(f"{path}: arrays {shapes} do not match {n} images at {s} px")
    return cache


class CorruptEntry(Exception):
    """A cache entry that cannot be used; it is deleted and rebuilt."""


def _load_valid(folder: Path, name: str, root: Path) -> SplitCache | None:
    """The entry ``folder/name`` if complete and readable; a corrupt one is noted and removed."""
    entry = folder / name
    if not (entry / "meta.json").is_file():
        return None
    try:
        return _load(entry, root)
    except CorruptEntry as e:
        log.warning("cache entry unreadable, rebuilding it (%s)", e)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _remove_stale(folder: Path, split: str, size: int, keep: str) -> None:
    """Delete older entries of this split and size, and temporary folders left by crashed builds."""
    for entry in folder.glob(f"{split}-s{size}-*"):
        if entry.name != keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    for entry in folder.glob(".tmp-*"):
        if entry.is_dir() and time.time() - entry.stat().st_mtime > 3600:
            shutil.rmtree(entry, ignore_errors=True)


def _check_free_space(folder: Path, n: int, size: int) -> None:
    """Refuse, in one line, a build that cannot fit in the free space of ``folder``."""
    need = n * size * size * 4 + (1 << 20)  # images (3 bytes a pixel) + masks (1) + meta.json
    free = shutil.disk_usage(folder).free
    if need > free:
        raise MSRFError(
            f"{folder}: not enough free space for the cache ({need / 2**20:.0f} MiB "
            f"needed, {free / 2**20:.0f} MiB free); free space or pass --cache-dir"
        )


def _npy_writer(path: Path, shape: tuple[int, ...]):
    """Open ``path`` as a uint8 ``.npy`` file of ``shape`` whose rows are then appended in order,
    with ordinary writes (a full disk is an ``OSError``, where a memory map dies with SIGBUS)."""
    f = open(path, "wb")
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)
    return f


def _build(
    target: Path,
    root: Path,
    split: str,
    size: int,
    pairs: list[Pair],
    mask_threshold: float | None,
    threads: int,
    normalize: str = "minmax",
) -> None:
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        n = len(pairs)
        original: list[tuple[int, int]] = []

        def work(i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
            pair = pairs[i]
            image = read_image(pair.image, name=display_name(pair.image, root), normalize=normalize)
            fg = read_mask(
                pair.mask, mask_threshold=mask_threshold, name=display_name(pair.mask, root)
            )
            if fg.shape != image.shape[:2]:
                raise MSRFError(
                    f"{display_name(pair.mask, root)}: size {fg.shape[0]}x{fg.shape[1]} differs "
                    f"from its image ({image.shape[0]}x{image.shape[1]}, HxW)"
                )
            return (*preprocess_pair(image, fg, size), (int(image.shape[0]), int(image.shape[1])))

        # rows are appended in order, a chunk of images at a time: a split need not fit in memory
        chunk = 4 * threads
        with (
            _npy_writer(tmp / "images.npy", (n, size, size, 3)) as fi,
            _npy_writer(tmp / "masks.npy", (n, size, size)) as fm,
            ThreadPoolExecutor(max_workers=threads) as pool,
        ):
            for start in range(0, n, chunk):
                for image, grey, hw in pool.map(work, range(start, min(n, start + chunk))):
                    fi.write(np.ascontiguousarray(image, np.uint8).tobytes())
                    fm.write(np.ascontiguousarray(grey, np.uint8).tobytes())
                    original.append(hw)
        meta = {
            "version": CACHE_VERSION,
            "split": split,
            "size": size,
            "mask_threshold": mask_threshold,
            "normalize": normalize,
            "stems": [p.stem for p in pairs],
            "image_files": [display_name(p.image, root) for p in pairs],
            "mask_files": [display_name(p.mask, root) for p in pairs],
            "original_sizes": original,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_or_build_cache(
    root: str | Path,
    split: str,
    size: int,
    *,
    mask_threshold: float | None = None,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    mask_suffix: str = "",
    normalize: str = "minmax",
) -> SplitCache:
    """The cache entry of ``split`` at ``size``×``size``, built from the files if missing or stale;
    masks paired by stem + ``mask_suffix``, images read with ``normalize`` (``to_uint8``).

    Raises :class:`MSRFError` naming the file on the first unpaired, unreadable or mismatched file
    (``check_data`` lists them all), when the cache folder (:func:`cache_folder`) is not writable
    or ``cache_dir`` lies among the inputs, and naming the folder and the cause when it lacks the
    space or a write fails (the half-built entry is removed). A corrupt entry (truncated array,
    garbled ``meta.json``) is noted, deleted and rebuilt. Nothing is written into ``root``.
    """
    root = Path(root)
    if cache_dir is not None:
        _refuse_among_inputs(root, cache_dir)
    pairs = split_pairs(root, split, mask_suffix)
    key = cache_key(root, split, size, pairs, mask_threshold, normalize)
    name = _entry_name(split, size, key)
    target_root = cache_folder(root, cache_dir)
    _note_legacy(root, target_root)
    cache = _load_valid(target_root, name, root)
    if cache is not None:
        return cache
    if not _writable(target_root):
        raise MSRFError(
            f"{target_root}: cache folder not writable; pass a writable cache_dir (--cache-dir)"
        )
    _check_free_space(target_root, len(pairs), size)
    start = time.perf_counter()
    threads = threads or min(8, (os.cpu_count() or 1) + 1)
    try:
        _build(target_root / name, root, split, size, pairs, mask_threshold, threads, normalize)
    except OSError as e:
        from msrfnet.safe_output import io_error

        raise io_error(target_root, e, "cannot write the cache") from e
    _remove_stale(target_root, split, size, keep=name)
    seconds = time.perf_counter() - start
    log.info(
        "cached %s/%s at %d px (%d images) in %.1f s: %s",
        root,
        split,
        size,
        len(pairs),
        seconds,
        target_root / name,
    )
    return _load(target_root / name, root)
