"""``msrf check-data``: validate a dataset folder before anything runs.

Every file is fully decoded (a header check misses truncated files), on a thread pool: Pillow and
OpenCV release the GIL while decoding, so threads scale without pickling arrays to processes.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MSRFError
from .io import IMAGE_EXTENSIONS, Pair, binarise_mask, display_name, mask_channel, pair_files, read_image, read_raw
from .layout import SPLITS, split_candidates


@dataclass
class SplitSummary:
    """What was found in one split: its folder, and per readable pair its size and foreground share."""

    folder: str
    pairs: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    foreground: list[float] = field(default_factory=list)


@dataclass
class CheckReport:
    """The outcome of :func:`check_data`.

    ``problems`` holds one line per problem, each naming the file relative to ``root``; ``notes``
    holds things that are not errors (skipped non-image files). ``ok`` is True when there are no
    problems.
    """

    root: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """The report as text: the problems, one a line, then a per-split summary table."""
        total = sum(s.pairs for s in self.splits.values())
        head = "OK" if self.ok else f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        lines = [f"check-data {self.root}: {head} ({total} image/mask pairs, {self.seconds:.1f} s)"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("")
        lines.append(_table(self.splits))
        return "\n".join(lines)


def _table(splits: dict[str, SplitSummary]) -> str:
    header = ("split", "folder", "pairs", "smallest HxW", "largest HxW", "fg mean", "fg min", "fg max")
    rows = [header]
    for name, s in splits.items():
        if s.sizes:
            by_area = sorted(s.sizes, key=lambda hw: (hw[0] * hw[1], hw))
            small, large = (f"{h}x{w}" for h, w in (by_area[0], by_area[-1]))
            fg = np.asarray(s.foreground)
            stats = [f"{100 * v:.2f}%" for v in (fg.mean(), fg.min(), fg.max())]
        else:
            small = large = "-"
            stats = ["-", "-", "-"]
        rows.append((name, s.folder + "/", str(s.pairs), small, large, *stats))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _check_pair(
    pair: Pair, root: Path, mask_threshold: float | None
) -> tuple[list[str], tuple[int, int] | None, float | None]:
    """Decode one pair: (problems, image size H×W or None, foreground fraction or None)."""
    problems: list[str] = []
    image_name, mask_name = display_name(pair.image, root), display_name(pair.mask, root)
    size = grey = None
    try:
        size = read_image(pair.image, name=image_name).shape[:2]
    except MSRFError as err:
        problems.append(str(err))
    try:
        grey = mask_channel(read_raw(pair.mask, name=mask_name, keep_indices=True))
    except MSRFError as err:
        problems.append(str(err))
    if grey is None:
        return problems, size, None
    if size is not None and grey.shape[:2] != size:
        mh, mw = grey.shape[:2]
        problems.append(f"{mask_name}: size {mh}x{mw} differs from its image {image_name} ({size[0]}x{size[1]}, HxW)")
        return problems, None, None
    try:
        foreground = binarise_mask(grey, mask_threshold=mask_threshold, name=mask_name)
    except MSRFError as err:
        problems.append(str(err))
        return problems, None, None
    if size is None:
        return problems, None, None
    return problems, size, float(foreground.mean())


def _skipped_files(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_EXTENSIONS
    )


def check_data(root: str | Path, mask_threshold: float | None = None, *, workers: int | None = None) -> CheckReport:
    """Validate the dataset at ``root`` (``train/``, ``val/`` or ``valid/``, ``test/``).

    Finds missing split folders, unpaired files, unreadable / corrupt / zero-byte files, image–mask
    size mismatches, empty splits and label-map masks (allowed when ``mask_threshold`` is given).
    Never raises for a problem in the data; it collects them all. ``workers`` threads decode
    (default: CPU count + 2, at most 16).
    """
    start = time.perf_counter()
    root = Path(root)
    report = CheckReport(root=root)
    if not root.is_dir():
        report.problems.append(f"{root}: dataset folder not found")
        report.seconds = time.perf_counter() - start
        return report
    work: list[tuple[str, Pair]] = []
    for split in SPLITS:
        found = split_candidates(root, split)
        if not found:
            alias = "val/ (or valid/)" if split == "val" else f"{split}/"
            report.problems.append(f"{alias}: split folder missing (expected {split}/images/ and {split}/masks/)")
            continue
        if len(found) > 1:
            report.problems.append("val/ and valid/: both exist; keep one (val/ is checked)")
        folder = found[0]
        summary = SplitSummary(folder=folder.name)
        report.splits[split] = summary
        missing = [sub for sub in ("images", "masks") if not (folder / sub).is_dir()]
        for sub in missing:
            report.problems.append(f"{folder.name}/{sub}/: folder missing")
        if missing:
            continue
        for sub in ("images", "masks"):
            skipped = _skipped_files(folder / sub)
            if skipped:
                shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
                report.notes.append(f"{folder.name}/{sub}/: {len(skipped)} non-image file(s) skipped: {shown}")
        pairing = pair_files(folder / "images", folder / "masks", base=root)
        report.problems += pairing.problems
        summary.pairs = len(pairing.pairs)
        if not pairing.pairs:
            report.problems.append(f"{folder.name}/: empty split (no image/mask pairs)")
        work += [(split, pair) for pair in pairing.pairs]

    threads = workers or min(16, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda item: _check_pair(item[1], root, mask_threshold), work))
    for (split, _), (problems, size, fg) in zip(work, results):
        report.problems += problems
        if size is not None and fg is not None:
            report.splits[split].sizes.append((int(size[0]), int(size[1])))
            report.splits[split].foreground.append(fg)
    report.seconds = time.perf_counter() - start
    return report
