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

from msrfnet.data.files import IMAGE_EXTENSIONS, Pair, display_name, pair_files
from msrfnet.data.io import (
    binarise_mask,
    check_mask_threshold,
    count_objects,
    is_instance_label_mask,
    mask_channel,
    read_image,
    read_raw,
)
from msrfnet.data.layout import SPLITS, split_candidates
from msrfnet.errors import MSRFError

__all__ = ["SplitSummary", "CheckReport", "check_data"]


@dataclass
class SplitSummary:
    """What was found in one split: its folder, and per readable pair its size and foreground."""

    folder: str
    pairs: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    foreground: list[float] = field(default_factory=list)


@dataclass
class CheckReport:
    """The outcome of :func:`check_data`.

    ``problems`` holds one line per problem, each naming the file relative to ``root``;
    ``warnings`` things that are likely mistakes but may be meant (a split whose masks are all
    empty or all full); ``notes`` things that are not errors (skipped non-image files). ``ok`` is
    True when there are no problems.
    """

    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
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
        if self.warnings:
            head += f", {len(self.warnings)} warning{'s' * (len(self.warnings) != 1)}"
        lines = [f"check-data {self.root}: {head} ({total} image/mask pairs, {self.seconds:.1f} s)"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("")
        lines.append(_table(self.splits))
        return "\n".join(lines)


def _table(splits: dict[str, SplitSummary]) -> str:
    header = (
        "split",
        "folder",
        "pairs",
        "smallest HxW",
        "largest HxW",
        "fg mean",
        "fg min",
        "fg max",
    )
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


@dataclass
class _PairResult:
    """What :func:`_check_pair` found: the problems, the image size H×W, the foreground
    fraction, the mask's smallest and largest value, and its objects if it is an instance label
    image (:func:`~msrfnet.data.io.is_instance_label_mask`)."""

    problems: list[str]
    size: tuple[int, int] | None = None
    foreground: float | None = None
    values: tuple[float, float] | None = None
    objects: int | None = None


def _check_pair(pair: Pair, root: Path, mask_threshold: float | None) -> _PairResult:
    """Decode one pair: the problems found, and its numbers where it is readable."""
    out = _PairResult(problems=[])
    image_name, mask_name = display_name(pair.image, root), display_name(pair.mask, root)
    size = grey = None
    try:
        size = read_image(pair.image, name=image_name).shape[:2]
    except MSRFError as err:
        out.problems.append(str(err))
    try:
        grey = mask_channel(read_raw(pair.mask, name=mask_name, keep_indices=True))
    except MSRFError as err:
        out.problems.append(str(err))
    if grey is None:
        out.size = size
        return out
    out.values = (float(grey.min()), float(grey.max())) if grey.size else None
    if size is not None and grey.shape[:2] != size:
        mh, mw = grey.shape[:2]
        out.problems.append(
            f"{mask_name}: size {mh}x{mw} differs from its image {image_name} "
            f"({size[0]}x{size[1]}, HxW)"
        )
        return out
    try:
        foreground = binarise_mask(grey, mask_threshold=mask_threshold, name=mask_name)
    except MSRFError as err:
        out.problems.append(str(err))
        return out
    if mask_threshold is None and is_instance_label_mask(grey):
        out.objects = count_objects(grey)
    if size is not None:
        out.size, out.foreground = size, float(foreground.mean())
    return out


def _skipped_files(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_EXTENSIONS
    )


def check_data(
    root: str | Path,
    mask_threshold: float | None = None,
    *,
    workers: int | None = None,
    mask_suffix: str = "",
) -> CheckReport:
    """Validate the dataset at ``root`` (``train/``, ``val/`` or ``valid/``, ``test/``).

    Finds missing split folders, unpaired files, unreadable / corrupt / zero-byte files, image–mask
    size mismatches, empty splits and label-map masks (allowed when ``mask_threshold`` is given).
    Instance label images (16-bit ids, :func:`~msrfnet.data.io.is_instance_label_mask`) are masks
    with foreground = label > 0; one note says how many masks are such and their objects.
    Never raises for a problem in the data; it collects them all. ``workers`` threads decode
    (default: CPU count + 2, at most 16).
    """
    start = time.perf_counter()
    root = Path(root)
    report = CheckReport(root=root)
    try:
        if mask_threshold is not None:
            check_mask_threshold(mask_threshold)
    except MSRFError as err:  # every mask would say so: once, before decoding any
        report.problems.append(str(err))
        report.seconds = time.perf_counter() - start
        return report
    if not root.is_dir():
        report.problems.append(f"{root}: dataset folder not found")
        report.seconds = time.perf_counter() - start
        return report
    work: list[tuple[str, Pair]] = []
    for split in SPLITS:
        found = split_candidates(root, split)
        if not found:
            alias = "val/ (or valid/)" if split == "val" else f"{split}/"
            report.problems.append(
                f"{alias}: split folder missing (expected {split}/images/ and {split}/masks/)"
            )
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
                report.notes.append(
                    f"{folder.name}/{sub}/: {len(skipped)} non-image file(s) skipped: {shown}"
                )
        pairing = pair_files(
            folder / "images", folder / "masks", base=root, mask_suffix=mask_suffix
        )
        report.problems += pairing.problems
        summary.pairs = len(pairing.pairs)
        if not pairing.pairs:
            report.problems.append(f"{folder.name}/: empty split (no image/mask pairs)")
        work += [(split, pair) for pair in pairing.pairs]

    threads = workers or min(16, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda item: _check_pair(item[1], root, mask_threshold), work))
    ranges, objects = [], []
    for (split, _), result in zip(work, results):
        report.problems += result.problems
        if result.values is not None:
            ranges.append(result.values)
        if result.objects is not None:
            objects.append(result.objects)
        if result.size is not None and result.foreground is not None:
            report.splits[split].sizes.append((int(result.size[0]), int(result.size[1])))
            report.splits[split].foreground.append(result.foreground)
    if objects:
        report.notes.append(
            f"masks: {len(objects)} of {len(work)} are instance label images (16-bit ids, "
            f"0 = background), {sum(objects)} objects in all; foreground = label > 0"
        )
    _check_foreground(report, mask_threshold, ranges)
    report.seconds = time.perf_counter() - start
    return report


def _check_foreground(
    report: CheckReport, mask_threshold: float | None, ranges: list[tuple[float, float]]
) -> None:
    """A ``mask_threshold`` outside the masks' values is a problem (it would make every mask empty
    or every mask full); a split whose masks are all empty or all full is a warning."""
    if mask_threshold is not None and ranges:
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        if not lo <= mask_threshold < hi:
            every = "empty" if mask_threshold >= hi else "full"
            report.problems.append(
                f"--mask-threshold {mask_threshold:g}: outside the masks' values "
                f"({lo:g} to {hi:g}), so every mask would be {every} "
                "(foreground = value > T)"
            )
    for s in report.splits.values():
        n = len(s.foreground)
        if n and max(s.foreground) == 0.0:
            report.warnings.append(f"{s.folder}/masks/: every mask is empty (no foreground in {n})")
        elif n and min(s.foreground) == 1.0:
            report.warnings.append(f"{s.folder}/masks/: every mask is full (all foreground in {n})")
