"""Metrics (spec §2.4, §3): hand-computed values, the empty-mask policy, HD95, torch = numpy, and
property tests on random masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from msrfnet.metrics import (
    ConfusionCounts,
    accuracy,
    binarize,
    confusion_counts,
    dice,
    fbeta,
    hd95,
    hd95_image,
    iou,
    per_image_dice_torch,
    per_image_table,
    precision,
    recall,
    summarize,
    two_class_mean,
)


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Four 4×4 images: a partial overlap, both empty, empty prediction, empty truth."""
    pred = np.zeros((4, 4, 4), dtype=bool)
    target = np.zeros((4, 4, 4), dtype=bool)
    pred[0, 0, 0:3] = True  # (0,0) (0,1) (0,2)
    target[0, 0, 1:4] = True  # (0,1) (0,2) (0,3)
    target[0, 1, 0] = True  # (1,0)
    # image 0: TP 2, FP 1, FN 2, TN 11; image 1: both empty
    target[2, 1, 1] = True  # image 2: prediction empty, truth 1 px
    pred[3, 2, 2] = True  # image 3: prediction 1 px, truth empty
    return pred, target


# --- hand-computed values ---------------------------------------------------------------------


def test_counts_by_hand():
    c = confusion_counts(*hand_case())
    assert c.tp.tolist() == [2, 0, 0, 0]
    assert c.fp.tolist() == [1, 0, 0, 1]
    assert c.fn.tolist() == [2, 0, 1, 0]
    assert c.tn.tolist() == [11, 16, 15, 15]
    assert c.tp.dtype == np.int64


def test_per_image_ratios_by_hand():
    c = confusion_counts(*hand_case())
    np.testing.assert_allclose(dice(c), [4 / 7, 1, 0, 0])
    np.testing.assert_allclose(iou(c), [2 / 5, 1, 0, 0])
    np.testing.assert_allclose(precision(c), [2 / 3, 1, 0, 0])
    np.testing.assert_allclose(recall(c), [2 / 4, 1, 0, 0])
    np.testing.assert_allclose(fbeta(c, 2.0), [10 / 19, 1, 0, 0])  # 5·2 / (5·2 + 4·2 + 1)
    np.testing.assert_allclose(accuracy(c), [13 / 16, 1, 15 / 16, 15 / 16])


def test_empty_score_parameter():
    c = confusion_counts(*hand_case())
    d = dice(c, empty_score=math.nan)
    assert math.isnan(d[1]) and d[2] == 0.0 and d[3] == 0.0  # only the both-empty image changes


def test_pooled_ratios_by_hand():
    g = confusion_counts(*hand_case()).pooled()
    assert [int(x) for x in g] == [2, 2, 3, 57]
    assert float(iou(g)) == pytest.approx(2 / 7)
    assert float(precision(g)) == pytest.approx(2 / 4)
    assert float(recall(g)) == pytest.approx(2 / 5)
    assert float(dice(g)) == pytest.approx(4 / 9)
    two = two_class_mean(g)
    assert float(two["iou"]) == pytest.approx((2 / 7 + 57 / 62) / 2)
    assert float(two["precision"]) == pytest.approx((2 / 4 + 57 / 60) / 2)
    assert float(two["recall"]) == pytest.approx((2 / 5 + 57 / 59) / 2)


def test_pooled_all_empty_set_scores_one():
    z = np.zeros((2, 3, 3), dtype=bool)
    g = confusion_counts(z, z).pooled()
    assert float(iou(g)) == 1.0 and float(precision(g)) == 1.0 and float(recall(g)) == 1.0


def test_summarize_by_hand():
    pred, target = hand_case()
    rows = per_image_table(pred, target)
    s = summarize(rows)
    assert s["n_images"] == 4
    assert s["dsc"] == pytest.approx((4 / 7 + 1) / 4)
    assert s["iou"] == pytest.approx((2 / 5 + 1) / 4)
    assert s["f2"] == pytest.approx((10 / 19 + 1) / 4)
    assert s["accuracy"] == pytest.approx((13 / 16 + 1 + 15 / 16 + 15 / 16) / 4)
    # image 0: boundary distances {1,0,0} and {0,0,1,1} → 95th percentile 1; image 1: 0
    assert rows[0]["hd95"] == pytest.approx(1.0)
    assert s["hd95"] == pytest.approx(0.5) and s["hd95_undefined"] == 2
    assert s["iou_global"] == pytest.approx(2 / 7) and s["miou"] == s["iou_global"]
    assert s["precision_global"] == pytest.approx(0.5) and s["recall_global"] == pytest.approx(0.4)
    assert s["dsc_global"] == pytest.approx(4 / 9)
    assert s["miou_two_class"] == pytest.approx((2 / 7 + 57 / 62) / 2)
    assert s == summarize(rows, confusion_counts(pred, target).pooled())
    assert all(isinstance(v, (int, float)) for v in s.values())


def test_summary_hd95_all_undefined_is_nan_without_warning():
    pred = np.zeros((1, 4, 4), dtype=bool)
    target = pred.copy()
    target[0, 1, 1] = True
    with np.errstate(all="raise"):
        s = summarize(per_image_table(pred, target))
    assert math.isnan(s["hd95"]) and s["hd95_undefined"] == 1


def test_channel_axis_and_integer_masks_accepted():
    pred, target = hand_case()
    c1 = confusion_counts(pred, target)
    c2 = confusion_counts(pred[:, None].astype(np.uint8) * 255, target[:, None].astype(np.int64))
    assert all((a == b).all() for a, b in zip(c1, c2))


def test_bad_inputs_raise_with_hint():
    pred, target = hand_case()
    with pytest.raises(TypeError, match="binarize"):
        confusion_counts(pred.astype(np.float32), target)
    with pytest.raises(TypeError, match="binarize"):
        confusion_counts(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        confusion_counts(pred[0], target[0])
    with pytest.raises(ValueError, match="same shape"):
        confusion_counts(pred, target[:2])
    with pytest.raises(TypeError, match="both"):
        confusion_counts(torch.from_numpy(pred), target)


def test_binarize_is_greater_or_equal():
    p = np.array([[[0.49, 0.5, 0.51]]])
    assert binarize(p).tolist() == [[[False, True, True]]]


# --- HD95 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 8])
def test_hd95_of_offset_squares_is_offset(k):
    a = np.zeros((64, 64), dtype=bool)
    b = np.zeros((64, 64), dtype=bool)
    a[20:40, 20:40] = True
    b[20:40, 20 + k : 40 + k] = True
    assert hd95_image(a, b) == pytest.approx(k, abs=1e-4)
    assert hd95_image(b, a) == pytest.approx(k, abs=1e-4)


def test_hd95_empty_policy():
    z = np.zeros((8, 8), dtype=bool)
    one = z.copy()
    one[3, 3] = True
    assert hd95_image(z, z) == 0.0
    assert math.isnan(hd95_image(z, one)) and math.isnan(hd95_image(one, z))


def test_hd95_mask_touching_image_border_has_a_boundary():
    # a mask filling the image still has its border pixels as boundary (MedPy convention)
    full = np.ones((10, 10), dtype=bool)
    half = full.copy()
    half[:, 7:] = False
    assert hd95_image(full, half) == pytest.approx(3.0, abs=1e-4)


def _brute_boundary(m: np.ndarray) -> np.ndarray:
    # independent definition: foreground with a 4-neighbour that is background or outside
    p = np.pad(m, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def _brute_hd95(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(_brute_boundary(a)), np.argwhere(_brute_boundary(b))
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


small_masks = hnp.arrays(
    np.bool_, st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12))
)
mask_pairs = small_masks.flatmap(lambda a: st.tuples(st.just(a), hnp.arrays(np.bool_, a.shape)))


@settings(max_examples=50, deadline=None)
@given(mask_pairs)
def test_hd95_matches_brute_force(pair):
    a, b = pair
    got = hd95(a, b)
    for i in range(len(a)):
        if a[i].any() and b[i].any():
            assert got[i] == pytest.approx(_brute_hd95(a[i], b[i]), abs=1e-3)
        elif a[i].any() or b[i].any():
            assert math.isnan(got[i])
        else:
            assert got[i] == 0.0


# --- torch path -------------------------------------------------------------------------------


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 1, 16, 16)) > 0.6
    target = rng.random((6, 1, 16, 16)) > 0.7
    pred[0] = target[0] = False  # both empty
    pred[1] = False  # one empty
    cn = confusion_counts(pred, target)
    ct = confusion_counts(torch.from_numpy(pred), torch.from_numpy(target))
    assert isinstance(ct.tp, torch.Tensor) and ct.tp.dtype == torch.int64
    assert all((a == b.numpy()).all() for a, b in zip(cn, ct))
    for fn in (dice, iou, precision, recall, fbeta, accuracy):
        np.testing.assert_allclose(fn(ct).numpy(), fn(cn), rtol=1e-6, err_msg=fn.__name__)
    np.testing.assert_allclose(float(iou(ct.pooled())), float(iou(cn.pooled())), rtol=1e-6)
    d = per_image_dice_torch(torch.from_numpy(pred), torch.from_numpy(target))
    assert d.dtype.is_floating_point and d.shape == (6,)
    np.testing.assert_allclose(d.numpy(), dice(cn), rtol=1e-6)
    # per_image_table accepts tensors too (converted on the host)
    rows = per_image_table(torch.from_numpy(pred), torch.from_numpy(target), with_hd95=False)
    assert rows[2]["dsc"] == pytest.approx(dice(cn)[2])


# --- properties on random masks ---------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(mask_pairs)
def test_dice_properties(pair):
    a, b = pair
    c_ab, c_ba = confusion_counts(a, b), confusion_counts(b, a)
    d = dice(c_ab)
    assert ((d >= 0) & (d <= 1)).all()
    np.testing.assert_allclose(d, dice(c_ba))  # symmetric
    equal = (a == b).all(axis=(1, 2))
    assert ((d == 1) == equal).all()  # 1 iff identical (both empty included)
    np.testing.assert_allclose(iou(c_ab), d / (2 - d), atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(mask_pairs)
def test_counts_partition_the_pixels(pair):
    a, b = pair
    c = confusion_counts(a, b)
    n, h, w = a.shape
    assert ((c.tp + c.fp + c.fn + c.tn) == h * w).all()
    assert sum(int(x) for x in c.pooled()) == n * h * w
    assert (c.tp + c.fp == a.sum(axis=(1, 2))).all() and (c.tp + c.fn == b.sum(axis=(1, 2))).all()


@settings(max_examples=50, deadline=None)
@given(mask_pairs)
def test_summary_values_in_range(pair):
    s = summarize(per_image_table(*pair, with_hd95=False))
    for k in (
        "dsc",
        "iou",
        "precision",
        "recall",
        "f2",
        "accuracy",
        "iou_global",
        "miou_two_class",
    ):
        assert 0.0 <= s[k] <= 1.0, k


def test_summarize_accepts_torch_pooled_counts():
    pred, target = hand_case()
    rows = per_image_table(pred, target)
    g = confusion_counts(torch.from_numpy(pred), torch.from_numpy(target)).pooled()
    assert isinstance(g, ConfusionCounts)
    assert summarize(rows, g) == summarize(rows)
