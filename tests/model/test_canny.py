"""``msrfnet.model.canny`` equals ``cv2.Canny``: on real nuclei images (the bundled sample, RGB and
grey), for the two threshold pairs the project uses, with synthetic edge cases, and bounded."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import msrfnet
from msrfnet.data.io import read_image
from msrfnet.data.preprocess import canny_map, resize_image
from msrfnet.model.canny import canny

SAMPLE = Path(msrfnet.__file__).parent / "sample"


def _sample_images(size: int) -> np.ndarray:
    files = sorted(SAMPLE.glob("*/images/*.png"))
    assert len(files) >= 20
    return np.stack([resize_image(read_image(f), size) for f in files])


def _torch_canny(rgb: np.ndarray, low, high, **kw) -> np.ndarray:
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    return canny(x, low, high, **kw)[:, 0].numpy().astype(np.uint8)


@pytest.mark.parametrize("low, high", [(10, 100), (10, 1000), (30.7, 60.2), (100, 10)])
def test_equals_opencv_on_real_images(low, high):
    images = _sample_images(64)
    ref = np.stack([canny_map(i, low, high) for i in images])
    got = _torch_canny(images, low, high)
    assert ref.any(), "the comparison needs edges"
    np.testing.assert_array_equal(got, ref)


def test_equals_opencv_on_grey_input():
    images = _sample_images(48)
    grey = images[..., 0]
    ref = np.stack([(cv2.Canny(np.ascontiguousarray(g), 10, 100) > 0) for g in grey]).astype(
        np.uint8
    )
    got = canny(torch.from_numpy(grey)[:, None], 10, 100)[:, 0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(got, ref)


def test_equals_opencv_on_random_textures():
    # noise exercises every gradient direction, ties between channels and the image border
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 40, 56, 3), dtype=np.uint8)
    images[:2] = images[:2] // 64 * 64  # coarse levels: many equal magnitudes
    for low, high in ((10, 100), (50, 400)):
        ref = np.stack([canny_map(i, low, high) for i in images])
        np.testing.assert_array_equal(_torch_canny(images, low, high), ref)


def test_bounded_hysteresis_is_a_subset_and_converges():
    images = _sample_images(64)
    exact = _torch_canny(images, 10, 100)
    one = _torch_canny(images, 10, 100, iterations=1)
    many = _torch_canny(images, 10, 100, iterations=512)
    assert (one <= exact).all() and one.sum() < exact.sum()
    np.testing.assert_array_equal(many, exact)


def test_accepts_float_pixels_and_rejects_other_shapes():
    images = _sample_images(32)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    np.testing.assert_array_equal(
        canny(as_float, 10, 100)[:, 0].numpy().astype(np.uint8), _torch_canny(images, 10, 100)
    )
    with pytest.raises(ValueError, match="N×C×H×W"):
        canny(as_float[0], 10, 100)
