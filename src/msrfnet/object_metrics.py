"""Object (instance) metrics of label images: the 2018 Data Science Bowl score, F1, count error.

Pixel metrics (:mod:`msrfnet.metrics`) cannot tell two touching nuclei from one blob; these can.
Both inputs are H×W integer label images: 0 is background, every other value one object (values
need not be consecutive).

Matching: a predicted object and a true object *match at threshold t* when their IoU (pixels in
both / pixels in either) is **greater than** t. For t ≥ 0.5 a match is automatically one-to-one:
objects of one image do not overlap, so an object can have IoU > 0.5 with at most one object of
the other image (two such partners would each need more than half of its pixels). Hence, per
image and threshold, TP = the pairs with IoU > t, FP = predicted objects without one, FN = true
objects without one.

Per image (:func:`object_scores`):

==================  ============================================================================
key                 definition
==================  ============================================================================
``n_pred, n_gt``    number of predicted / true objects
``tp50, fp50,       the counts at IoU > 0.5
fn50``
``dsb_ap``          the 2018 DSB challenge score of the image: the mean over t in 0.50, 0.55, …,
                    0.95 of TP(t) / (TP(t) + FP(t) + FN(t))
``f1_iou50``        2TP/(2TP+FP+FN) at t = 0.5
``count_error``     \\|n_pred − n_gt\\|
``count_error_rel`` \\|n_pred − n_gt\\| / n_gt (NaN when the image holds no true object)
==================  ============================================================================

Empty images follow the pixel metrics' policy: no true and no predicted object scores 1 (nothing
to find, nothing found), objects on exactly one side score 0.

:func:`summarize_objects` reduces the rows: ``dsb_map`` is the challenge's leaderboard number (the
mean of ``dsb_ap`` over images), ``f1_iou50`` the per-image mean F1, ``f1_iou50_pooled`` (and
``precision_iou50``, ``recall_iou50``) from the counts summed over images, ``count_error`` and
``count_error_rel`` the means (the relative one over images with true objects).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from msrfnet.errors import MSRFError

__all__ = [
    "IOU_THRESHOLDS",
    "matched_ious",
    "object_scores",
    "summarize_objects",
    "OBJECT_KEYS",
]

#: The challenge's thresholds 0.50, 0.55, …, 0.95 (rounded so that 0.5 + k·0.05 is exact).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
#: The per-image keys of :func:`object_scores`, in CSV order.
OBJECT_KEYS = (
    "n_pred",
    "n_gt",
    "tp50",
    "fp50",
    "fn50",
    "dsb_ap",
    "f1_iou50",
    "count_error",
    "count_error_rel",
)


def _labels(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise MSRFError(f"{name}: expected an H×W integer label image, got {arr.dtype} {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise MSRFError(f"{name}: negative label values (0 is background, objects are > 0)")
    return arr


def matched_ious(pred: Any, truth: Any) -> tuple[np.ndarray, int, int]:
    """(IoUs of every overlapping (true, predicted) object pair, n_pred, n_gt).

    The overlaps come from scikit-image's sparse contingency table, so the cost grows with the
    pixels and the overlapping pairs, not with n_pred × n_gt.
    """
    from skimage.metrics import contingency_table

    p, t = _labels(pred, "prediction"), _labels(truth, "truth")
    if p.shape != t.shape:
        raise MSRFError(f"prediction {p.shape} and truth {t.shape} differ in size")
    p_ids, p_area = np.unique(p[p > 0], return_counts=True)
    t_ids, t_area = np.unique(t[t > 0], return_counts=True)
    if not len(p_ids) or not len(t_ids):
        return np.zeros(0), len(p_ids), len(t_ids)
    table = contingency_table(t.astype(np.int64), p.astype(np.int64)).tocoo()
    keep = (table.row > 0) & (table.col > 0)
    rows, cols = table.row[keep], table.col[keep]
    inter = np.asarray(table.data[keep], dtype=np.float64)
    area_t = t_area[np.searchsorted(t_ids, rows)]
    area_p = p_area[np.searchsorted(p_ids, cols)]
    return inter / (area_t + area_p - inter), len(p_ids), len(t_ids)


def _ratio(num: int, den: int, agree: bool) -> float:
    """num/den; with den = 0, 1 when prediction and truth agree (nothing to find, nothing
    found), else 0: the empty-mask policy of :mod:`msrfnet.metrics`."""
    return num / den if den else (1.0 if agree else 0.0)


def _f(tp: int, fp: int, fn: int, weight: int = 1) -> float:
    """weight·TP / (weight·TP + FP + FN): the challenge's per-threshold score (1), F1 (2)."""
    return _ratio(weight * tp, weight * tp + fp + fn, fp + fn == 0)


def object_scores(pred: Any, truth: Any) -> dict[str, Any]:
    """One image's object metrics (the module docstring's table) as plain Python numbers."""
    ious, n_pred, n_gt = matched_ious(pred, truth)
    aps = []
    for t in IOU_THRESHOLDS:
        tp = int(np.count_nonzero(ious > t))
        aps.append(_f(tp, n_pred - tp, n_gt - tp))
    tp50 = int(np.count_nonzero(ious > 0.5))
    fp50, fn50 = n_pred - tp50, n_gt - tp50
    diff = abs(n_pred - n_gt)
    return {
        "n_pred": n_pred,
        "n_gt": n_gt,
        "tp50": tp50,
        "fp50": fp50,
        "fn50": fn50,
        "dsb_ap": float(np.mean(aps)),
        "f1_iou50": _f(tp50, fp50, fn50, 2),
        "count_error": diff,
        "count_error_rel": diff / n_gt if n_gt else math.nan,
    }


def _mean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def summarize_objects(rows: Iterable[Mapping[str, Any]]) -> dict[str, float | int]:
    """The set's object metrics from :func:`object_scores` rows (see the module docstring)."""
    rows = list(rows)
    tp, fp, fn = (sum(int(r[k]) for r in rows) for k in ("tp50", "fp50", "fn50"))
    return {
        "dsb_map": _mean([r["dsb_ap"] for r in rows]),
        "f1_iou50": _mean([r["f1_iou50"] for r in rows]),
        "f1_iou50_pooled": _f(tp, fp, fn, 2),
        "precision_iou50": _ratio(tp, tp + fp, fp + fn == 0),
        "recall_iou50": _ratio(tp, tp + fn, fp + fn == 0),
        "count_error": _mean([r["count_error"] for r in rows]),
        "count_error_rel": _mean([r["count_error_rel"] for r in rows]),
        "n_pred_objects": sum(int(r["n_pred"]) for r in rows),
        "n_gt_objects": sum(int(r["n_gt"]) for r in rows),
    }
