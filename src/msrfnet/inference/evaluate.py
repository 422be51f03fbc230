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
every prediction has labels (``<stem>_labels``, or a label image itself) or ``objects`` is given
(``--instances``): then a prediction without labels is split into objects (:func:`split_instances`
on its probabilities, else on its mask, with the :class:`~msrfnet.option_groups.Objects`'
``min_size`` and ``seed_distance``).

Outputs in ``out`` (:class:`~msrfnet.safe_output.OutputFolder`, as ``msrf test``):
``metrics.json`` (the summaries, the object keys next to the pixel keys, and what was compared),
``metrics.csv`` (one row per image) and, with ``images`` (a folder of the images, paired by stem),
``overlays/best_NN_<stem>.png`` / ``worst_NN_<stem>.png`` by DSC.

Plan, then score: :func:`plan_evaluate` pairs the files and checks the report folder
(:class:`EvaluationPlan`), :func:`score` reads, scores and writes; :func:`evaluate` does both.
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
from msrfnet.inference.instances import split_instances
from msrfnet.inference.report import (
    format_summary,
    report_folder,
    write_outputs,
    write_overlays,
)
from msrfnet.metrics import per_image_table, summarize
from msrfnet.object_metrics import OBJECT_KEYS, object_scores, summarize_objects
from msrfnet.option_groups import Objects
from msrfnet.options import check_threshold
from msrfnet.safe_output import OutputFolder, refuse_collisions

__all__ = [
    "DEFAULT_OUT",
    "Item",
    "Predicted",
    "pair_predictions",
    "to_probability",
    "read_prediction",
    "truths_are_labels",
    "EvaluationPlan",
    "plan_evaluate",
    "score",
    "evaluate",
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


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationPlan:
    """What one ``msrf evaluate`` reads, computes and writes, decided before any scoring."""

    pred: Path
    gt: Path
    items: list[Item]  #: one per truth, sorted by stem
    target: OutputFolder  #: the report folder, checked: what it holds may be replaced
    gt_labels: bool  #: the truths are label images: object metrics where predictions have labels
    objects: Objects | None = None  #: split predictions without labels into objects so
    threshold: float = 0.5  #: probabilities to masks
    mask_threshold: float | None = None  #: masks read as binary (``read_mask``)
    overlays: bool = False  #: the items have their images: best/worst panels

    @property
    def out(self) -> Path:
        return self.target.root


def plan_evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    out: str | Path = DEFAULT_OUT,
    images: str | Path | None = None,
    objects: Objects | None = None,
    threshold: float = 0.5,
    mask_suffix: str = "",
    mask_threshold: float | None = None,
    overwrite: bool = False,
) -> EvaluationPlan:
    """The pairs (:func:`pair_predictions`; the predictions left out are logged), the checked
    report folder (never among the input folders) and what is scored (see the module
    docstring); ``objects`` splits the predictions without labels (``--instances``)."""
    threshold = check_threshold(threshold)
    items, extra = pair_predictions(pred, gt, mask_suffix=mask_suffix, images=images)
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        log.info(f"left out: {len(extra)} prediction(s) without a truth ({extra[0]}{more})")
    # never among the input folders (two files: OutputFolder alone keeps them safe)
    folders = [Path(p) for p in (pred, gt, images) if p is not None and Path(p).is_dir()]
    refuse_collisions(out, input_folders=folders)
    target = report_folder(Path(out), "msrf evaluate", overwrite)
    gt_labels = truths_are_labels(items)
    if objects is not None and not gt_labels:
        raise MSRFError(
            f"--instances: GT {gt} holds no label image (one channel of integers, one value per "
            "object, more than one object in some file); object metrics need instance truths"
        )
    return EvaluationPlan(
        Path(pred),
        Path(gt),
        items,
        target,
        gt_labels,
        objects,
        threshold,
        mask_threshold,
        overlays=images is not None,
    )


# --- the run ------------------------------------------------------------------------------------


def _truth(plan: EvaluationPlan, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
    """An item's truth: (foreground, labels when the truths are label images)."""
    if plan.gt_labels:
        lab = read_labels(item.truth)
        return lab > 0, lab
    return read_mask(item.truth, mask_threshold=plan.mask_threshold), None


def _row(plan: EvaluationPlan, item: Item) -> tuple[dict[str, Any], bool]:
    """One item's CSV row (pixel metrics, and object metrics where both sides have labels) and
    whether its prediction was split into objects."""
    truth, truth_labels = _truth(plan, item)
    p = read_prediction(item, plan.threshold, plan.mask_threshold)
    if p.foreground.shape != truth.shape:
        raise MSRFError(
            f"{item.prediction}: {p.foreground.shape[1]}×{p.foreground.shape[0]} pixels, its "
            f"truth {item.truth} {truth.shape[1]}×{truth.shape[0]}; compare at the same size"
        )
    row = {"stem": item.stem, "prediction": item.prediction.name, "truth": item.truth.name}
    row.update(height=truth.shape[0], width=truth.shape[1])
    row.update(per_image_table(p.foreground[None], truth[None])[0])
    labels, split = p.labels, False
    if labels is None and plan.objects is not None:
        source = p.probability if p.probability is not None else p.foreground
        sizes = plan.objects
        labels = split_instances(
            source, plan.threshold, min_size=sizes.min_size, seed_distance=sizes.seed_distance
        )
        split = True
    if labels is not None and truth_labels is not None:
        if labels.shape != truth.shape:
            raise MSRFError(f"{item.labels}: size differs from its truth {item.truth}")
        row.update(object_scores(labels, truth_labels))
    return row, split


def score(plan: EvaluationPlan) -> dict[str, Any]:
    """Score the plan's pairs and write the report; returns the ``metrics.json`` object (NaN
    kept as float NaN); the summary is logged (INFO)."""
    rows, split = [], 0
    for item in plan.items:
        row, was_split = _row(plan, item)
        rows.append(row)
        split += was_split
    # object metrics only when every image has them: a partial object table would mislead
    objects = plan.gt_labels and all(OBJECT_KEYS[0] in row for row in rows)
    result: dict[str, Any] = dict(summarize(rows))
    if objects:
        result.update(summarize_objects(rows))
    else:
        for row in rows:
            for key in OBJECT_KEYS:
                row.pop(key, None)
    result.update(
        protocol="each image's own size (no resizing)",
        threshold=plan.threshold,
        pred=str(plan.pred),
        gt=str(plan.gt),
        object_metrics=objects,
    )
    if split:
        sizes = plan.objects
        result.update(
            split_predictions=split, min_size=sizes.min_size, seed_distance=sizes.seed_distance
        )

    write_outputs(plan.target, result, rows)
    if plan.overlays:
        items = plan.items
        write_overlays(
            plan.target,
            _Lazy(lambda i: _picture(items[i], rows[i])),
            _Lazy(lambda i: _truth(plan, items[i])[0]),
            _Lazy(
                lambda i: read_prediction(items[i], plan.threshold, plan.mask_threshold).foreground
            ),
            rows,
        )
    log.info(format_summary(result))
    if plan.gt_labels and not objects:
        log.info(
            "GT holds label images: pass --instances to split the predicted masks into objects"
        )
    made = "metrics.json, metrics.csv" + (", overlays/" if plan.overlays else "")
    log.info(f"results: {plan.out}/ ({made})")
    return result


def evaluate(pred: str | Path, gt: str | Path, **options: Any) -> dict[str, Any]:
    """``msrf evaluate`` from Python: score ``pred`` against ``gt`` (see the module docstring),
    planned with ``options`` (:func:`plan_evaluate`: ``out``, ``images``, ``objects`` to split
    predictions without labels into objects, ``threshold``, ``mask_suffix``, ``mask_threshold``,
    ``overwrite``) then scored (:func:`score`). Returns the ``metrics.json`` object.

    Raises:
        MSRFError: a pairing problem, an unreadable file or a size mismatch (named), ``objects``
            with truths that are not label images, an output folder among the inputs or holding
            files that may not be replaced.
    """
    return score(plan_evaluate(pred, gt, **options))


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
