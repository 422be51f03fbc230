"""Objects from a probability map (msrfnet.inference.instances): touching nuclei split, specks
removed, labels a consecutive uint16 image, and a per-object table that agrees with the labels."""

from __future__ import annotations

import numpy as np
import pytest

from msrfnet.errors import MSRFError
from msrfnet.inference.instances import object_table, split_instances


def disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def two_touching_discs():
    """Two radius-12 discs whose centres are 20 px apart: one connected blob with a neck."""
    shape = (64, 80)
    return disc(shape, (32, 28), 12) | disc(shape, (32, 48), 12)


@pytest.mark.parametrize("surface", ["distance", "probability"])
def test_two_touching_discs_become_two_objects(surface):
    mask = two_touching_discs()
    from scipy import ndimage as ndi

    assert ndi.label(mask)[1] == 1  # one blob before splitting
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    if surface == "probability":  # the network's valley between the two nuclei
        prob[:, 38] = np.where(mask[:, 38], 0.6, 0.1)
    labels = split_instances(prob, surface=surface)
    assert labels.max() == 2
    left, right = labels[32, 20], labels[32, 56]
    assert {int(left), int(right)} == {1, 2}
    assert np.array_equal(labels > 0, mask)  # nothing of the mask lost, nothing added


def test_small_lone_blob_is_removed_and_labels_are_consecutive_uint16():
    mask = np.zeros((60, 60), bool)
    mask |= disc(mask.shape, (15, 15), 6)  # ~113 px
    mask |= disc(mask.shape, (45, 45), 7)  # ~150 px
    mask[50:53, 5:8] = True  # 9 px speck, alone
    labels = split_instances(mask.astype(np.float32), min_size=15)
    assert labels.dtype == np.uint16
    assert labels[51, 6] == 0
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    kept = split_instances(mask.astype(np.float32), min_size=5)
    assert kept.max() == 3 and kept[51, 6] > 0


def test_empty_map_gives_empty_labels_and_table():
    labels = split_instances(np.zeros((8, 9), np.float32))
    assert labels.shape == (8, 9) and labels.dtype == np.uint16 and labels.max() == 0
    assert object_table(labels) == []


def test_table_areas_sum_to_labelled_pixels_and_measure_each_object():
    mask = two_touching_discs()
    mask |= disc(mask.shape, (8, 70), 5)
    labels = split_instances(mask.astype(np.float32))
    intensity = np.where(labels > 0, 200, 10).astype(np.uint8)
    rows = object_table(labels, intensity=np.dstack([intensity] * 3))
    assert [r["label"] for r in rows] == list(range(1, int(labels.max()) + 1))
    assert sum(r["area"] for r in rows) == int(np.count_nonzero(labels))
    small = min(rows, key=lambda r: r["area"])
    assert abs(small["centroid_row"] - 8) < 1 and abs(small["centroid_col"] - 70) < 1
    assert small["bbox_top"] == 3 and small["bbox_bottom"] == 14
    assert all(r["mean_intensity"] == 200 for r in rows)
    assert small["eccentricity"] < 0.2 and small["solidity"] > 0.9
    assert object_table(labels)[0]["mean_intensity"] is None


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"probability": np.zeros((3, 3, 3))}, "H×W"),
        ({"probability": np.full((4, 4), np.nan)}, "NaN"),
        ({"probability": np.zeros((4, 4)), "seed_distance": 0}, "seed_distance"),
        ({"probability": np.zeros((4, 4)), "surface": "edges"}, "surface"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, words):
    with pytest.raises(MSRFError, match=words):
        split_instances(**kwargs)
