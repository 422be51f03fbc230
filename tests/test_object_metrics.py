"""Object metrics on hand-made label images whose answers are counted by hand in each test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msrfnet.errors import MSRFError
from msrfnet.object_metrics import (
    IOU_THRESHOLDS,
    OBJECT_KEYS,
    matched_ious,
    object_scores,
    summarize_objects,
)


def two_squares() -> np.ndarray:
    """Two 4×4 objects (16 px each), labels 1 and 2, apart."""
    lab = np.zeros((12, 12), np.uint16)
    lab[1:5, 1:5] = 1
    lab[6:10, 6:10] = 2
    return lab


def test_thresholds_are_the_challenge_s():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_identical_labels_score_one_whatever_the_numbers():
    truth = two_squares()
    pred = np.where(truth == 1, 7, np.where(truth == 2, 3, 0)).astype(np.int32)  # renumbered
    row = object_scores(pred, truth)
    assert list(row) == list(OBJECT_KEYS)
    assert row["dsb_ap"] == 1.0 and row["f1_iou50"] == 1.0
    assert (row["n_pred"], row["n_gt"], row["tp50"], row["fp50"], row["fn50"]) == (2, 2, 2, 0, 0)
    assert row["count_error"] == 0 and row["count_error_rel"] == 0.0


def test_iou_exactly_one_half_is_not_a_match():
    # object 2 predicted as its left half: IoU 8/16 = 0.5, not > 0.5 -> at every threshold
    # TP 1 (object 1), FP 1, FN 1 -> 1/3; F1 = 2/(2+1+1)
    truth = two_squares()
    pred = truth.copy()
    pred[6:10, 8:10] = 0
    ious, n_pred, n_gt = matched_ious(pred, truth)
    assert sorted(ious.tolist()) == [0.5, 1.0] and (n_pred, n_gt) == (2, 2)
    row = object_scores(pred, truth)
    assert row["dsb_ap"] == pytest.approx(1 / 3)
    assert row["f1_iou50"] == pytest.approx(0.5)
    assert (row["tp50"], row["fp50"], row["fn50"]) == (1, 1, 1)
    assert row["count_error"] == 0


def test_ap_averages_over_thresholds():
    # one 10×10 object predicted as 10×9 inside it: IoU 0.9 -> a match for t = 0.50 … 0.85
    # (8 thresholds, score 1) and none for 0.90, 0.95 (TP 0, FP 1, FN 1: score 0) -> 0.8
    truth = np.zeros((12, 12), np.uint8)
    truth[1:11, 1:11] = 1
    pred = np.zeros_like(truth)
    pred[1:11, 1:10] = 5
    row = object_scores(pred, truth)
    assert row["dsb_ap"] == pytest.approx(0.8)
    assert row["f1_iou50"] == 1.0


def test_merged_nuclei_match_neither_and_count_one_short():
    # two touching 4×4 nuclei predicted as one 4×8 blob: IoU 16/32 = 0.5 with each -> no match;
    # TP 0, FP 1, FN 2 at every threshold; count error |1 - 2| = 1, relative 1/2
    truth = np.zeros((8, 12), np.uint16)
    truth[2:6, 2:6] = 1
    truth[2:6, 6:10] = 2
    pred = (truth > 0).astype(np.uint16)
    row = object_scores(pred, truth)
    assert row["dsb_ap"] == 0.0 and row["f1_iou50"] == 0.0
    assert (row["tp50"], row["fp50"], row["fn50"]) == (0, 1, 2)
    assert row["count_error"] == 1 and row["count_error_rel"] == 0.5


def test_one_pred_overlapping_two_truths_is_at_most_one_match():
    # a 4×7 prediction over nucleus 1 (16 px) and 3 columns of nucleus 2: IoU 16/28 = 0.571 with
    # 1, 12/32 with 2 -> one TP at t = 0.50, 0.55; F1 = 2/(2+0+1) = 2/3
    truth = np.zeros((8, 12), np.uint16)
    truth[2:6, 2:6] = 1
    truth[2:6, 6:10] = 2
    pred = np.zeros_like(truth)
    pred[2:6, 2:9] = 1
    row = object_scores(pred, truth)
    assert (row["tp50"], row["fp50"], row["fn50"]) == (1, 0, 1)
    assert row["f1_iou50"] == pytest.approx(2 / 3)
    # t = 0.50, 0.55: TP 1, FN 1 -> 1/2 each; t >= 0.60: TP 0, FP 1, FN 2 -> 0
    assert row["dsb_ap"] == pytest.approx((0.5 + 0.5) / 10)


def test_empty_images():
    empty = np.zeros((6, 6), np.uint16)
    row = object_scores(empty, empty)
    assert row["dsb_ap"] == 1.0 and row["f1_iou50"] == 1.0 and row["count_error"] == 0
    assert math.isnan(row["count_error_rel"])
    truth = two_squares()
    missed = object_scores(np.zeros_like(truth), truth)
    assert missed["dsb_ap"] == 0.0 and missed["count_error"] == 2
    assert missed["count_error_rel"] == 1.0
    invented = object_scores(truth, np.zeros_like(truth))
    assert invented["dsb_ap"] == 0.0 and invented["fp50"] == 2


def test_summary_means_and_pooled_counts():
    truth = two_squares()
    half = truth.copy()
    half[6:10, 8:10] = 0  # row as in test_iou_exactly_one_half_is_not_a_match
    rows = [object_scores(truth, truth), object_scores(half, truth)]
    s = summarize_objects(rows)
    assert s["dsb_map"] == pytest.approx((1 + 1 / 3) / 2)
    assert s["f1_iou50"] == pytest.approx((1 + 0.5) / 2)
    # pooled: TP 3, FP 1, FN 1 -> F1 6/8, precision 3/4, recall 3/4
    assert s["f1_iou50_pooled"] == pytest.approx(0.75)
    assert s["precision_iou50"] == pytest.approx(0.75)
    assert s["recall_iou50"] == pytest.approx(0.75)
    assert s["count_error"] == 0.0 and s["n_pred_objects"] == 4 and s["n_gt_objects"] == 4
    nothing = summarize_objects([object_scores(np.zeros_like(truth), truth)])
    assert nothing["precision_iou50"] == 0.0 and nothing["recall_iou50"] == 0.0


def test_refusals():
    truth = two_squares()
    with pytest.raises(MSRFError, match="differ in size"):
        object_scores(truth[:5], truth)
    with pytest.raises(MSRFError, match="integer label image"):
        object_scores(truth.astype(np.float32), truth)
    with pytest.raises(MSRFError, match="negative label"):
        object_scores(truth.astype(np.int32) - 1, truth)
