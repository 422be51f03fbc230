"""A cache of pre-processed uint8 arrays per (split, image size), so epochs never decode files.

Layout: ``<cache root>/<split>-s<size>-<key>/`` holding ``images.npy`` (N×S×S×3 uint8), ``masks.npy``
(N×S×S uint8, the resized anti-aliased grey masks) and ``meta.json`` (stems, relative paths,
original sizes). The arrays are opened as read-only memory maps.

The key hashes the cache format version, the split, the size, the mask rule (``mask_threshold``)
and every pair's relative paths, byte sizes and mtimes, so editing, touching, adding or removing a
file builds a new entry (and the stale one of that split and size is deleted).

Cache root: ``cache_dir`` if given, else ``<data>/.msrf_cache``; when the dataset folder is
read-only (a shared data set; a folder without write bits counts as read-only even for root) and
for the bundled sample it is ``$XDG_CACHE_HOME/msrfnet`` (``~/.cache/msrfnet``).
Outside ``<data>/.msrf_cache`` entries go in a per-dataset subfolder ``<name>-<hash of its path>``.
An entry is built in a temporary folder and renamed into place, so a crash or a second process
never sees a half-written cache.
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

from ..errors import MSRFError
from .io import Pair, display_name, read_image, read_mask
from .layout import split_pairs
from .preprocess import preprocess_pair
from .root import sample_root

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_FOLDER = ".msrf_cache"


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
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "msrfnet"


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


def cache_roots(root: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Where caches of dataset ``root`` are looked up, in order (the first writable one gets new ones)."""
    root = Path(root)
    if cache_dir is not None:
        return [Path(cache_dir) / _dataset_folder_name(root)]
    user = _user_cache_root() / _dataset_folder_name(root)
    if root.resolve() == sample_root():  # never write into the installed package (or the git checkout)
        return [user]
    return [root / CACHE_FOLDER, user]


def cache_key(root: Path, split: str, size: int, pairs: list[Pair], mask_threshold: float | None) -> str:
    """Hash of everything the cached arrays depend on (see the module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, split, size, mask_threshold, "lanczos"]).encode())
    for pair in pairs:
        for path in (pair.image, pair.mask):
            st = path.stat()
            h.update(f"{display_name(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _entry_name(split: str, size: int, key: str) -> str:
    return f"{split}-s{size}-{key}"


def _load(path: Path, root: Path) -> SplitCache:
    meta = json.loads((path / "meta.json").read_text())
    return SplitCache(
        path=path,
        root=root,
        split=meta["split"],
        size=meta["size"],
        images=np.load(path / "images.npy", mmap_mode="r"),
        masks=np.load(path / "masks.npy", mmap_mode="r"),
        stems=meta["stems"],
        image_files=meta["image_files"],
        mask_files=meta["mask_files"],
        original_sizes=[tuple(s) for s in meta["original_sizes"]],
    )


def _remove_stale(folder: Path, split: str, size: int, keep: str) -> None:
    """Delete older entries of this split and size, and temporary folders left by crashed builds."""
    for entry in folder.glob(f"{split}-s{size}-*"):
        if entry.name != keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    for entry in folder.glob(".tmp-*"):
        if entry.is_dir() and time.time() - entry.stat().st_mtime > 3600:
            shutil.rmtree(entry, ignore_errors=True)


def _build(
    target: Path,
    root: Path,
    split: str,
    size: int,
    pairs: list[Pair],
    mask_threshold: float | None,
    threads: int,
) -> None:
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        n = len(pairs)
        # open_memmap writes straight to disk: a large split never has to fit in memory twice.
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
        original: list[tuple[int, int]] = [(0, 0)] * n

        def work(i: int) -> None:
            pair = pairs[i]
            image = read_image(pair.image, name=display_name(pair.image, root))
            fg = read_mask(pair.mask, mask_threshold=mask_threshold, name=display_name(pair.mask, root))
            if fg.shape != image.shape[:2]:
                raise MSRFError(
                    f"{display_name(pair.mask, root)}: size {fg.shape[0]}x{fg.shape[1]} differs from its image "
                    f"({image.shape[0]}x{image.shape[1]}, HxW)"
                )
            images[i], masks[i] = preprocess_pair(image, fg, size)
            original[i] = (int(image.shape[0]), int(image.shape[1]))

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, range(n)))
        images.flush()
        masks.flush()
        del images, masks
        meta = {
            "version": CACHE_VERSION,
            "split": split,
            "size": size,
            "mask_threshold": mask_threshold,
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
) -> SplitCache:
    """The cache entry of ``split`` at ``size``×``size``, built from the files if missing or stale.

    Raises :class:`MSRFError` naming the file on the first unpaired, unreadable or mismatched file
    (``check_data`` lists them all), and when no cache folder is writable.
    """
    root = Path(root)
    pairs = split_pairs(root, split)
    name = _entry_name(split, size, cache_key(root, split, size, pairs, mask_threshold))
    folders = cache_roots(root, cache_dir)
    for folder in folders:
        if (folder / name / "meta.json").is_file():
            return _load(folder / name, root)
    target_root = next((f for f in folders if _writable(f)), None)
    if target_root is None:
        raise MSRFError(f"{folders[-1]}: cache folder not writable; pass a writable cache_dir (--cache-dir)")
    start = time.perf_counter()
    _build(target_root / name, root, split, size, pairs, mask_threshold, threads or min(8, (os.cpu_count() or 1) + 1))
    _remove_stale(target_root, split, size, keep=name)
    seconds = time.perf_counter() - start
    log.info("cached %s/%s at %d px (%d images) in %.1f s: %s", root, split, size, len(pairs), seconds, target_root / name)
    return _load(target_root / name, root)
