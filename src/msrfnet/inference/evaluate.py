"""``msrf evaluate PRED GT``: score any predictions against any ground truth, paired by stem.

``PRED`` and ``GT`` are two folders (or two files). A prediction pairs with the truth of the same
file stem; with ``mask_suffix`` a truth's stem is the prediction's plus the suffix (ISIC's
``<id>_segmentation.png``). A ``msrf predict`` output folder works as ``PRED`` as it is:
``<stem>_labels.*`` (objects) and ``<stem>_prob.*`` (probabilities) belong to ``<stem>``,
``<stem>_overlay.*`` and other files are ignored. A truth without a prediction is an error (the
score would silently cover fewer images); predictions without a truth are named and left out.

**Pixel metrics** — those of ``msrf test`` (:mod:`msrfnet.metrics`: :func:`per_image_table`,
:func:`summarize`), at each image's own size (``msrf test``'s *original resolution* protocol):
nothing is resized, and a prediction whose size differs from its truth's is an error. Masks are
binarised by the data package's rules (:func:`msrfnet.data.io.read_mask`; ``mask_threshold`` as
``--mask-threshold``); a probability map (``<stem>_prob``: 16-bit PNG of p·65535, 8-bit of p·255,
or a float TIFF in [0, 1]) is thresholded at ``threshold``; a label image counts as its non-zero
pixels.

**Object metrics** (:mod:`msrfnet.object_metrics`: the 2018 DSB mean AP over IoU 0.50:0.95,
F1 at IoU 0.5, count error) when the truths are label images (some file holds more than one
object: :func:`msrfnet.data.io.is_label_image`; then every truth is read as labels) and either
every prediction has labels (``<stem>_labels``, or a label image itself) or ``instances`` is set:
then a prediction without labels is split into objects (:func:`split_instances` on its
probabilities, else on its mask, with ``min_size`` and ``seed_distance``).

Outputs in ``out`` (:class:`~msrfnet.safe_output.OutputFolder`, as ``msrf test``):
``metrics.json`` (the summaries, the object keys next to the pixel keys, and what was compared),
``metrics.csv`` (one row per image) and, with ``images`` (a folder of the images, paired by stem),
``overlays/best_NN_<stem>.png`` / ``worst_NN_<stem>.png`` by DSC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msrfnet.data.files import files_by_stem
from msrfnet.data.io import (
    binarise_mask,
    is_label_image,
    mask_channel,
    read_image,
    read_labels,
    read_mask,
    read_raw,
)
from msrfnet.errors import MSRFError
from msrfnet.inference.instances import (
    MIN_SIZE,
    SEED_DISTANCE,
    check_instance_options,
    split_instances,
)
from msrfnet.inference.report import (
    OBJECT_METRICS,
    OTHER_METRICS,
    PAPER_METRICS,
    format_value,
    report_folder,
    write_outputs,
    write_overlays,
)
from msrfnet.metrics import per_image_table, summarize
from msrfnet.object_metrics import OBJECT_KEYS, object_scores, summarize_objects
from msrfnet.options import check_threshold
from msrfnet.safe_output import refuse_inside_inputs

__all__ = [
    "DEFAULT_OUT",
    "Item",
    "Predicted",
    "pair_predictions",
    "to_probability",
    "read_prediction",
    "truths_are_labels",
    "run_evaluate",
    "format_summary",
]

log = logging.getLogger("msrfnet")

DEFAULT_OUT = Path("msrf-evaluate")
LABELS, PROB, OVERLAY = "_labels", "_prob", "_overlay"  # msrf predict's extra outputs


@dataclass
class Item:
    """One truth and what predicts it."""

    stem: str
    truth: Path
    mask: Path | None = None
    prob: Path | None = None
    labels: Path | None = None
    image: Path | None = None

    @property
    def prediction(self) -> Path:
        return next(p for p in (self.mask, self.prob, self.labels) if p is not None)


def _found(folder: Path, suffix: str, what: str) -> dict[str, Path]:

    files, _, problems = files_by_stem(folder, suffix=suffix)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MSRFError(f"{what} {folder}: {problems[0]}{more}")
    if not files:
        raise MSRFError(f"{what} {folder}: no image files in this folder")
    return files


def pair_predictions(
    pred: str | Path,
    gt: str | Path,
    *,
    mask_suffix: str = "",
    images: str | Path | None = None,
) -> tuple[list[Item], list[str]]:
    """(the items sorted by stem, the stems of predictions without a truth); see the module
    docstring. Raises :class:`MSRFError` for a missing path, a truth without a prediction, a
    stem shared by two files, or (with ``images``) a truth without its image."""
    pred, gt = Path(pred), Path(gt)
    for path, what in ((pred, "PRED"), (gt, "GT")):
        if not path.exists():
            raise MSRFError(f"{what} {path}: no such file or folder")
    if gt.is_file() != pred.is_file():
        raise MSRFError(f"PRED {pred} and GT {gt}: give two folders or two files")
    if gt.is_file():
        truths, found = {gt.stem: gt}, {gt.stem: pred}  # two files pair whatever their names
    else:
        truths = _found(gt, mask_suffix, "GT")
        found = _found(pred, "", "PRED")
    items = [
        Item(s, t, found.get(s), found.get(s + PROB), found.get(s + LABELS))
        for s, t in sorted(truths.items())
    ]
    missing = [it for it in items if it.mask is it.prob is it.labels is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MSRFError(
            f"{missing[0].truth}: no prediction with stem {missing[0].stem!r} in {pred}{more}"
        )
    used = {s + end for s in truths for end in ("", PROB, LABELS, OVERLAY)}
    extra = sorted(s for s in found if s not in used and not s.endswith(OVERLAY))
    if images is not None:
        pictures = _found(Path(images), "", "--images")
        for it in items:
            it.image = pictures.get(it.stem)
            if it.image is None:
                raise MSRFError(f"--images {images}: no image with stem {it.stem!r}")
    return items, extra


# --- reading ------------------------------------------------------------------------------------


def to_probability(raw: np.ndarray, name: str) -> np.ndarray:
    """A probability map file as float32 in [0, 1]: uint16 / 65535 (``msrf predict
    --probabilities``), uint8 / 255, float as stored (refused outside [0, 1])."""
    if raw.ndim != 2:
        raise MSRFError(f"{name}: a probability map has one channel, got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.floating):
        if raw.size and (raw.min() < 0 or raw.max() > 1):
            raise MSRFError(f"{name}: float values outside [0, 1]; not a probability map")
        return raw.astype(np.float32)
    top = 65535.0 if raw.dtype.itemsize > 1 else 255.0
    return (raw.astype(np.float32) / np.float32(top)).clip(0, 1)


@dataclass
class Predicted:
    foreground: np.ndarray
    labels: np.ndarray | None
    probability: np.ndarray | None


def read_prediction(item: Item, threshold: float, mask_threshold: float | None) -> Predicted:
    """The prediction's foreground, labels (when it has them) and probabilities (when given)."""

    labels = read_labels(item.labels) if item.labels is not None else None
    prob = None
    if item.prob is not None:
        prob = to_probability(read_raw(item.prob, keep_indices=True), str(item.prob))
    if item.mask is not None:
        raw = read_raw(item.mask, keep_indices=True)
        if np.issubdtype(raw.dtype, np.floating) and raw.ndim == 2:
            prob = to_probability(raw, str(item.mask))
            fg = prob >= threshold
        elif is_label_image(raw):
            labels = raw if labels is None else labels
            fg = raw > 0
        else:
            fg = binarise_mask(
                mask_channel(raw), mask_threshold=mask_threshold, name=str(item.mask)
            )
    elif prob is not None:
        fg = prob >= threshold
    else:
        fg = labels > 0
    return Predicted(fg, labels, prob)


def truths_are_labels(items: list[Item]) -> bool:
    """Whether the truth folder holds label images: some file has more than one object."""

    return any(is_label_image(read_raw(it.truth, keep_indices=True)) for it in items)


# --- the command --------------------------------------------------------------------------------


def run_evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    out: str | Path = DEFAULT_OUT,
    images: str | Path | None = None,
    instances: bool = False,
    min_size: int | None = None,
    seed_distance: int | None = None,
    threshold: float = 0.5,
    mask_suffix: str = "",
    mask_threshold: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score ``pred`` against ``gt`` (see the module docstring); returns the ``metrics.json``
    object (NaN kept as float NaN); the summary is logged (INFO).

    Raises:
        MSRFError: a pairing problem, an unreadable file or a size mismatch (named), ``instances``
            with truths that are not label images, an output folder among the inputs or holding
            files that may not be replaced.
    """

    check_threshold(threshold)
    min_size, seed_distance = check_instance_options(
        MIN_SIZE if min_size is None else min_size,
        SEED_DISTANCE if seed_distance is None else seed_distance,
    )
    items, extra = pair_predictions(pred, gt, mask_suffix=mask_suffix, images=images)
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        log.info(f"left out: {len(extra)} prediction(s) without a truth ({extra[0]}{more})")
    out = Path(out)
    # never among the input folders (two files: OutputFolder alone keeps them safe)
    folders = [Path(p) for p in (pred, gt, images) if p is not None and Path(p).is_dir()]
    refuse_inside_inputs(out, folders)
    target = report_folder(out, "msrf evaluate", overwrite)
    gt_labels = truths_are_labels(items)
    if instances and not gt_labels:
        raise MSRFError(
            f"--instances: GT {gt} holds no label image (one channel of integers, one value per "
            "object, more than one object in some file); object metrics need instance truths"
        )

    def truth_of(it: Item) -> tuple[np.ndarray, np.ndarray | None]:
        if gt_labels:
            lab = read_labels(it.truth)
            return lab > 0, lab
        return read_mask(it.truth, mask_threshold=mask_threshold), None

    rows: list[dict[str, Any]] = []
    objects = gt_labels
    split = 0
    for it in items:
        truth, truth_labels = truth_of(it)
        p = read_prediction(it, threshold, mask_threshold)
        if p.foreground.shape != truth.shape:
            raise MSRFError(
                f"{it.prediction}: {p.foreground.shape[1]}×{p.foreground.shape[0]} pixels, its "
                f"truth {it.truth} {truth.shape[1]}×{truth.shape[0]}; compare at the same size"
            )
        row = {"stem": it.stem, "prediction": it.prediction.name, "truth": it.truth.name}
        row.update(height=truth.shape[0], width=truth.shape[1])
        row.update(per_image_table(p.foreground[None], truth[None])[0])
        labels = p.labels
        if labels is None and instances:
            source = p.probability if p.probability is not None else p.foreground
            labels = split_instances(
                source, threshold, min_size=min_size, seed_distance=seed_distance
            )
            split += 1
        if labels is not None and truth_labels is not None:
            if labels.shape != truth.shape:
                raise MSRFError(f"{it.labels}: size differs from its truth {it.truth}")
            row.update(object_scores(labels, truth_labels))
        else:
            objects = False
        rows.append(row)

    result: dict[str, Any] = dict(summarize(rows))
    if objects:
        result.update(summarize_objects(rows))
    else:
        for row in rows:  # a partial object table would mislead: all or nothing
            for key in OBJECT_KEYS:
                row.pop(key, None)
    result.update(
        protocol="each image's own size (no resizing)",
        threshold=threshold,
        pred=str(pred),
        gt=str(gt),
        object_metrics=objects,
    )
    if split:
        result.update(split_predictions=split, min_size=min_size, seed_distance=seed_distance)

    write_outputs(target, result, rows)
    if images is not None:
        write_overlays(
            target,
            _Lazy(lambda i: _picture(items[i], rows[i])),
            _Lazy(lambda i: truth_of(items[i])[0]),
            _Lazy(lambda i: read_prediction(items[i], threshold, mask_threshold).foreground),
            rows,
        )
    log.info(format_summary(result))
    if gt_labels and not objects:
        log.info(
            "GT holds label images: pass --instances to split the predicted masks into objects"
        )
    made = "metrics.json, metrics.csv" + (", overlays/" if images is not None else "")
    log.info(f"results: {out}/ ({made})")
    return result


class _Lazy:
    """A sequence that reads item ``i`` when asked: only the overlays' images are read again."""

    def __init__(self, get: Callable[[int], np.ndarray]):
        self.get = get

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)


def _picture(item: Item, row: dict[str, Any]) -> np.ndarray:

    rgb = read_image(item.image)
    if rgb.shape[:2] != (row["height"], row["width"]):
        raise MSRFError(f"{item.image}: size differs from its truth {item.truth}")
    return rgb


def format_summary(result: dict[str, Any]) -> str:
    """The pixel metrics (one column: each image's own size) and, when computed, the objects."""

    head = f"{'metric':<16} {'protocol':<52} {'value':>8}"
    lines = [head, "-" * len(head)]
    groups = [PAPER_METRICS, OTHER_METRICS] + (
        [OBJECT_METRICS] if result.get("object_metrics") else []
    )
    for group in groups:
        for key, label, protocol in group:
            lines.append(f"{label:<16} {protocol:<52} {format_value(result.get(key)):>8}")
        lines.append("")
    lines.append(f"{result.get('n_images', 0)} images, at their own size")
    return "\n".join(lines)
