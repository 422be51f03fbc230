"""Segmentation metrics, each with its definition, its averaging protocol and its empty-mask policy.

Spec: ``msrf-net-original.md`` §2.4 (model selection), §2.6 (testing) and §3 (metrics). The
original mixes protocols: its headline DSC is a *per-image mean*, while the IoU, precision and
recall of the current ``test.py`` are *pooled* over every test pixel, and older code
(``msrf.py`` before 2021-09-17, ``shape.py``) reported a *two-class* mean IoU. All three are here,
under names that say which is which.

Two steps, as in segmentation_models_pytorch's ``metrics/functional.py``:

1. :func:`confusion_counts` turns binary predictions and targets, (N, H, W) or (N, 1, H, W), into
   per-image counts ``ConfusionCounts(tp, fp, fn, tn)``, each of shape (N,). It works on numpy
   arrays (evaluation) and on torch tensors (validation during training: the result stays on the
   device, with no host synchronisation). ``counts.pooled()`` sums them over the images.
2. Named reductions on either: :func:`dice`, :func:`iou`, :func:`precision`, :func:`recall`,
   :func:`fbeta`, :func:`accuracy`, :func:`two_class_mean`. Per-image counts give one value per
   image; pooled counts give one value for the set. :func:`hd95` works on the masks themselves.

:func:`per_image_table` computes one row per image; :func:`summarize` reduces rows to this flat
dict (every value a float, counts an int):

=======================  ======================  ===================================================
key                      protocol                definition / origin
=======================  ======================  ===================================================
``dsc``                  per-image mean          2TP/(2TP+FP+FN); the paper's headline DSC, the
                                                 original's model-selection score and ``test.py``
                                                 DSC (§2.4, §3.1)
``iou``                  per-image mean          TP/(TP+FP+FN)
``precision``            per-image mean          TP/(TP+FP)
``recall``               per-image mean          TP/(TP+FN)
``f2``                   per-image mean          5TP/(5TP+4FN+FP), F-beta with β = 2
``accuracy``             per-image mean          (TP+TN)/(H·W)
``hd95``                 per-image mean          95th percentile of symmetric boundary distances,
                                                 pixels; mean over the images where it is defined
``hd95_undefined``       count (int)             images where exactly one of prediction/truth is
                                                 empty
``dsc_global``           pooled over all pixels  2TP/(2TP+FP+FN) from the summed counts
``iou_global``           pooled over all pixels  TP/(TP+FP+FN): the current ``test.py`` "IoU" (§3.1)
``miou``                 pooled over all pixels  the same number as ``iou_global``, under the name
                                                 the paper prints (foreground only, despite the "m")
``precision_global``     pooled over all pixels  TP/(TP+FP), as ``test.py``
``recall_global``        pooled over all pixels  TP/(TP+FN), as ``test.py``
``miou_two_class``       pooled, 2-class mean    ½[TP/(TP+FP+FN) + TN/(TN+FN+FP)]: the older code's
                                                 "mean IoU" over {background, foreground} (§3.1)
``precision_two_class``  pooled, 2-class mean    ½[TP/(TP+FP) + TN/(TN+FN)], older code
``recall_two_class``     pooled, 2-class mean    ½[TP/(TP+FN) + TN/(TN+FP)], older code
``n_images``             count (int)             number of images
=======================  ======================  ===================================================

Empty-mask policy (one rule for every ratio, in the spirit of MONAI's stated policies):

- A ratio whose denominator is 0 scores ``empty_score`` (default 1.0) when prediction and truth
  agree on the image (FP = FN = 0: nothing to find, nothing found), and 0.0 otherwise.
- So for DSC and IoU: both empty → 1, exactly one empty → 0 (the original's rule, §2.4). The
  precision of an empty prediction on a non-empty truth is 0, and so is the recall of a non-empty
  prediction on an empty truth. Pooled ratios follow the same rule, which can only apply when the
  whole set is empty.
- ``empty_score=float("nan")`` excludes both-empty images from the means instead (``summarize``
  uses NaN-aware means), which is MONAI's ``ignore_empty`` behaviour.
- HD95: both empty → 0.0; exactly one empty → NaN (a distance to nothing is undefined, and any
  stand-in such as the image diagonal would dominate the mean). NaN images are left out of the
  ``hd95`` mean and counted in ``hd95_undefined``, so the mean is read together with that count.

Predictions must be binary: call :func:`binarize` on probabilities first (the original thresholds
``x`` at 0.5, §2.6). Floating-point masks are refused rather than silently thresholded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Union

import cv2
import numpy as np
import torch

__all__ = [
    "ConfusionCounts",
    "accuracy",
    "binarize",
    "confusion_counts",
    "dice",
    "fbeta",
    "hd95",
    "hd95_image",
    "iou",
    "per_image_dice_torch",
    "per_image_table",
    "precision",
    "recall",
    "summarize",
    "two_class_mean",
]

Array = Union[np.ndarray, torch.Tensor]

# connectivity-1 structuring element: the boundary of a mask as MedPy/scipy define it
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


class ConfusionCounts(NamedTuple):
    """Per-image (shape (N,)) or pooled (0-d) pixel counts; numpy or torch, int64."""

    tp: Array
    fp: Array
    fn: Array
    tn: Array

    def pooled(self) -> "ConfusionCounts":
        """The counts summed over the images: the pixel-pooled ("global") protocol."""
        return ConfusionCounts(*(c.sum() for c in self))


def binarize(prob: Array, threshold: float = 0.5) -> Array:
    """``prob >= threshold``: the original's test-time rule for ``x`` (§1.7, §2.6)."""
    return prob >= threshold


_BINARIZE_HINT = "; threshold probabilities with binarize(prob) first"


def _as_binary(x: Array, name: str) -> Array:
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex:
            raise TypeError(
                f"{name}: expected a bool or integer mask, got {x.dtype}{_BINARIZE_HINT}"
            )
        x = x if x.dtype == torch.bool else x != 0
    else:
        x = np.asarray(x)
        if x.dtype != np.bool_ and not np.issubdtype(x.dtype, np.integer):
            raise TypeError(
                f"{name}: expected a bool or integer mask, got {x.dtype}{_BINARIZE_HINT}"
            )
        x = x if x.dtype == np.bool_ else x != 0
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(
            f"{name}: expected shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}; "
            "add a batch axis for one image (mask[None])"
        )
    return x


def confusion_counts(pred: Array, target: Array) -> ConfusionCounts:
    """Per-image TP, FP, FN, TN of binary masks (N, H, W) or (N, 1, H, W).

    Numpy in, numpy out; torch in, torch out (on the same device, no host sync). Non-zero
    integer values count as foreground.
    """
    if isinstance(pred, torch.Tensor) != isinstance(target, torch.Tensor):
        raise TypeError(
            "confusion_counts: pred and target must both be numpy or both torch, "
            f"got {type(pred).__name__} and {type(target).__name__}"
        )
    p, t = _as_binary(pred, "pred"), _as_binary(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"confusion_counts: pred {tuple(p.shape)} and target {tuple(t.shape)} "
            "must have the same shape"
        )
    n_pixels = p.shape[1] * p.shape[2]
    if isinstance(p, torch.Tensor):
        tp = (p & t).sum((1, 2))
        fp = (p & ~t).sum((1, 2))
        fn = (~p & t).sum((1, 2))
    else:
        tp = np.count_nonzero(p & t, axis=(1, 2)).astype(np.int64)
        fp = np.count_nonzero(p & ~t, axis=(1, 2)).astype(np.int64)
        fn = np.count_nonzero(~p & t, axis=(1, 2)).astype(np.int64)
    return ConfusionCounts(tp, fp, fn, n_pixels - tp - fp - fn)


def _ratio(num: Array, den: Array, c: ConfusionCounts, empty_score: float) -> Array:
    # the empty-mask policy of the module docstring, as an element-wise select (no host sync)
    no_error = (c.fp + c.fn) == 0
    if isinstance(den, torch.Tensor):
        fallback = torch.where(no_error, empty_score, 0.0)
        return torch.where(den > 0, num / den.clamp_min(1), fallback)
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    fallback = np.where(no_error, empty_score, 0.0)
    return np.where(den > 0, num / np.maximum(den, 1.0), fallback)


def dice(c: ConfusionCounts, empty_score: float = 1.0) -> Array:
    """DSC = 2TP/(2TP+FP+FN); both empty → ``empty_score``, exactly one empty → 0."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, c, empty_score)


def iou(c: ConfusionCounts, empty_score: float = 1.0) -> Array:
    """Foreground IoU (Jaccard) = TP/(TP+FP+FN); both empty → ``empty_score``, one empty → 0."""
    return _ratio(c.tp, c.tp + c.fp + c.fn, c, empty_score)


def precision(c: ConfusionCounts, empty_score: float = 1.0) -> Array:
    """TP/(TP+FP); an empty prediction scores ``empty_score`` on an empty truth, else 0."""
    return _ratio(c.tp, c.tp + c.fp, c, empty_score)


def recall(c: ConfusionCounts, empty_score: float = 1.0) -> Array:
    """TP/(TP+FN) (sensitivity); empty truth: ``empty_score`` for an empty prediction, else 0."""
    return _ratio(c.tp, c.tp + c.fn, c, empty_score)


def fbeta(c: ConfusionCounts, beta: float = 2.0, empty_score: float = 1.0) -> Array:
    """F-beta = (1+β²)TP/((1+β²)TP + β²FN + FP); β = 2 weighs recall 4× precision.

    Written on the counts so that an undefined precision or recall never enters it.
    """
    b2 = beta * beta
    return _ratio((1 + b2) * c.tp, (1 + b2) * c.tp + b2 * c.fn + c.fp, c, empty_score)


def accuracy(c: ConfusionCounts) -> Array:
    """(TP+TN)/(TP+FP+FN+TN): pixel accuracy (dominated by the background on small objects)."""
    return _ratio(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn, c, 1.0)


def two_class_mean(c: ConfusionCounts, empty_score: float = 1.0) -> dict[str, Array]:
    """IoU, precision and recall averaged over {background, foreground}, as the older code's
    confusion-matrix "mean" metrics (§3.1); background swaps TP ↔ TN and FP ↔ FN."""
    bg = ConfusionCounts(c.tn, c.fn, c.fp, c.tp)
    return {
        "iou": (iou(c, empty_score) + iou(bg, empty_score)) / 2,
        "precision": (precision(c, empty_score) + precision(bg, empty_score)) / 2,
        "recall": (recall(c, empty_score) + recall(bg, empty_score)) / 2,
    }


def per_image_dice_torch(
    pred: torch.Tensor, target: torch.Tensor, empty_score: float = 1.0
) -> torch.Tensor:
    """Per-image DSC as a float tensor (N,) on the input's device, for validation during
    training: the original's model-selection score is its mean (§2.4). No host sync."""
    return dice(confusion_counts(pred, target), empty_score)


# --- HD95 ---------------------------------------------------------------------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    # mask minus its erosion by a cross; the zero padding makes pixels on the image border part of
    # the boundary, as scipy's binary_erosion (border_value=0) does in MedPy's hd95
    padded = np.pad(mask.astype(np.uint8), 1)
    eroded = cv2.erode(padded, _CROSS)[1:-1, 1:-1].astype(bool)
    return mask & ~eroded


def hd95_image(pred: np.ndarray, target: np.ndarray) -> float:
    """HD95 of one image (H, W), in pixels: the 95th percentile of the distances from each
    boundary pixel of one mask to the nearest boundary pixel of the other, both directions pooled
    (MedPy's ``hd95``). Both empty → 0.0; exactly one empty → NaN."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    has_p, has_t = p.any(), t.any()
    if not has_p and not has_t:
        return 0.0
    if not has_p or not has_t:
        return math.nan
    bp, bt = _boundary(p), _boundary(t)
    # distanceTransform measures the distance to the nearest zero pixel: zeros on the boundary
    to_t = cv2.distanceTransform((~bt).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d = np.concatenate([to_t[bp], to_p[bt]]).astype(np.float64)
    return float(np.percentile(d, 95))


def hd95(pred: Array, target: Array) -> np.ndarray:
    """Per-image HD95 (N,) float64 of masks (N, H, W) or (N, 1, H, W); see :func:`hd95_image`."""
    p, t = _to_numpy(_as_binary(pred, "pred")), _to_numpy(_as_binary(target, "target"))
    if p.shape != t.shape:
        raise ValueError(f"hd95: pred {p.shape} and target {t.shape} must have the same shape")
    return np.array([hd95_image(a, b) for a, b in zip(p, t)], dtype=np.float64)


def _to_numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


# --- tables -------------------------------------------------------------------------------------

_PER_IMAGE = ("dsc", "iou", "precision", "recall", "f2", "accuracy", "hd95")


def per_image_table(
    pred: Array,
    target: Array,
    *,
    empty_score: float = 1.0,
    with_hd95: bool = True,
) -> list[dict[str, Any]]:
    """One row per image: the counts ``tp, fp, fn, tn`` (int) and ``dsc, iou, precision, recall,
    f2, accuracy, hd95`` (float; ``hd95`` is NaN when skipped or undefined). The caller may add
    keys (a file name) before writing the rows out or passing them to :func:`summarize`."""
    p, t = _to_numpy(_as_binary(pred, "pred")), _to_numpy(_as_binary(target, "target"))
    c = confusion_counts(p, t)
    columns = {
        "dsc": dice(c, empty_score),
        "iou": iou(c, empty_score),
        "precision": precision(c, empty_score),
        "recall": recall(c, empty_score),
        "f2": fbeta(c, 2.0, empty_score),
        "accuracy": accuracy(c),
        "hd95": hd95(p, t) if with_hd95 else np.full(len(p), math.nan),
    }
    rows = []
    for i in range(len(p)):
        row: dict[str, Any] = {k: int(v[i]) for k, v in c._asdict().items()}
        row.update({k: float(v[i]) for k, v in columns.items()})
        rows.append(row)
    return rows


def _nanmean(values: list[float]) -> float:
    # an all-NaN column (no image defined) is NaN without numpy's RuntimeWarning
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def summarize(
    per_image_rows: Iterable[Mapping[str, Any]],
    global_counts: ConfusionCounts | None = None,
    *,
    empty_score: float = 1.0,
) -> dict[str, float | int]:
    """The flat summary of the module docstring's table.

    ``per_image_rows`` come from :func:`per_image_table` (possibly accumulated over batches).
    ``global_counts`` are the pooled counts; when omitted they are summed from the rows' counts.
    Per-image means ignore NaN entries (undefined HD95, or ``empty_score=nan``).
    """
    rows = list(per_image_rows)
    if global_counts is None:
        global_counts = ConfusionCounts(
            *(np.int64(sum(int(r[k]) for r in rows)) for k in ConfusionCounts._fields)
        )
    g = ConfusionCounts(*(np.int64(_to_numpy(x)) for x in global_counts))
    out: dict[str, float | int] = {"n_images": len(rows)}
    for key in _PER_IMAGE:
        out[key] = _nanmean([r[key] for r in rows])
    out["hd95_undefined"] = sum(1 for r in rows if _one_empty(r))
    out["dsc_global"] = float(dice(g, empty_score))
    out["iou_global"] = float(iou(g, empty_score))
    out["miou"] = out["iou_global"]
    out["precision_global"] = float(precision(g, empty_score))
    out["recall_global"] = float(recall(g, empty_score))
    two = two_class_mean(g, empty_score)
    out["miou_two_class"] = float(two["iou"])
    out["precision_two_class"] = float(two["precision"])
    out["recall_two_class"] = float(two["recall"])
    return out


def _one_empty(row: Mapping[str, Any]) -> bool:
    # exactly one of prediction (tp+fp) and truth (tp+fn) has foreground: HD95's undefined case
    return (row["tp"] + row["fp"] == 0) != (row["tp"] + row["fn"] == 0)
