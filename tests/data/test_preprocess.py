"""Pre-processing as the original ``get_image``: Lanczos resize, 0.5 binarisation, Canny maps."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from _data_helpers import blob_pair, save
from _shared import require_fixture
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from msrfnet.data.files import list_image_files
from msrfnet.data.io import foreground_to_grey, read_image, read_mask
from msrfnet.data.preprocess import (
    binarise_grey,
    canny_map,
    preprocess_pair,
    resize_image,
    resize_mask,
)


def _original_get_image(image_path: Path, mask_path: Path, size: int) -> tuple[np.ndarray, ...]:
    """The original ``utils.get_image`` written out (PIL ANTIALIAS == LANCZOS), minus the /255."""
    x = np.asarray(Image.open(image_path).convert("RGB").resize((size, size), Image.LANCZOS))
    y = np.asarray(Image.open(mask_path).convert("L").resize((size, size), Image.LANCZOS))
    return (
        x,
        y,
        (y / 255.0 >= 0.5).astype(np.uint8),
        cv2.Canny(x, 10, 1000) / 255,
        cv2.Canny(y, 10, 1000) / 255,
    )


def _compare_with_original(image_path: Path, mask_path: Path, size: int) -> None:
    image, grey = preprocess_pair(read_image(image_path), read_mask(mask_path), size)
    x, y, target, canny, edge = _original_get_image(image_path, mask_path, size)
    assert image.dtype == grey.dtype == np.uint8
    assert (image == x).all() and (grey == y).all()
    assert (binarise_grey(grey) == target).all()
    assert (canny_map(image, 10, 1000) == canny).all() and (canny_map(grey, 10, 1000) == edge).all()


def test_matches_original_pipeline_on_synthetic_rgba(tmp_path: Path) -> None:
    rgb, mask = blob_pair(70, 90, seed=2)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    _compare_with_original(save(tmp_path / "i.png", rgba), save(tmp_path / "m.png", mask), 64)


def test_matches_original_pipeline_on_kdsb_files() -> None:
    root = require_fixture("data/kdsb")
    images = list_image_files(root / "val" / "images")[:3]
    for path in images:
        _compare_with_original(path, root / "val" / "masks" / path.name, 256)


def test_resize_is_pillow_lanczos() -> None:
    rgb, mask = blob_pair(33, 57)
    assert (
        resize_image(rgb, 24)
        == np.asarray(Image.fromarray(rgb).resize((24, 24), Image.Resampling.LANCZOS))
    ).all()
    grey = resize_mask(mask, 16)
    assert (
        grey == np.asarray(Image.fromarray(mask).resize((16, 16), Image.Resampling.LANCZOS))
    ).all()
    assert 0 < ((grey > 0) & (grey < 255)).sum()  # anti-aliased, not binarised


def test_zero_one_mask_gives_the_same_grey_as_zero_255(tmp_path: Path) -> None:
    _, mask = blob_pair(50, 50)
    fg255 = read_mask(save(tmp_path / "a.png", mask))
    fg01 = read_mask(save(tmp_path / "b.png", (mask // 255).astype(np.uint8)))
    rgb = np.zeros((50, 50, 3), np.uint8)
    assert (preprocess_pair(rgb, fg01, 32)[1] == preprocess_pair(rgb, fg255, 32)[1]).all()


def test_binarise_at_half() -> None:
    assert binarise_grey(np.array([0, 127, 128, 255], np.uint8)).tolist() == [0, 0, 1, 1]


def _step(height: int, channels: int = 3, channel: int | None = None) -> np.ndarray:
    img = np.zeros((32, 32, channels), np.uint8)
    if channel is None:
        img[:, 16:] = height
    else:
        img[:, 16:, channel] = height
    return img


def test_canny_thresholds_on_a_step_edge() -> None:
    # 3x3 Sobel of a step of height d peaks at 4d (L1 norm): it passes the high threshold 1000 only
    # when d > 250, so (10, 1000) keeps a 0→255 step and drops a 0→200 step; (10, 100) keeps both.
    strong, weak = canny_map(_step(255), 10, 1000), canny_map(_step(200), 10, 1000)
    assert strong.dtype == np.uint8 and set(np.unique(strong)) == {0, 1}
    assert strong[:, 15:17].any(axis=1).all() and strong[:, :14].sum() == strong[:, 18:].sum() == 0
    assert weak.sum() == 0
    assert canny_map(_step(200), 10, 100)[:, 15:17].any(axis=1).all()


def test_canny_on_rgb_uses_the_strongest_channel() -> None:
    # A 255 step in red alone is an edge; 200 in all three channels is not (no sum over channels).
    assert canny_map(_step(255, channel=0), 10, 1000)[:, 15:17].any(axis=1).all()
    assert canny_map(_step(200), 10, 1000).sum() == 0
    grey_version = canny_map(_step(255, channels=1)[..., 0], 10, 1000)
    assert (canny_map(_step(255), 10, 1000) == grey_version).all()


def test_edge_target_is_canny_of_the_antialiased_grey_mask() -> None:
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 60**2
    grey = resize_mask(foreground_to_grey(disc), 64)
    edge = canny_map(grey, 10, 1000)
    assert (edge == (cv2.Canny(grey, 10, 1000) > 0)).all()
    ys, xs = np.nonzero(edge)
    radius = np.hypot(ys - 31.5, xs - 31.5)
    assert (
        len(ys) > 40 and np.abs(radius - 60 * 64 / 200).max() < 2.5
    )  # a ring on the disc's border


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    size=st.sampled_from([8, 16, 24, 64]),
    fill=st.sampled_from(["random", "empty", "full"]),
    seed=st.integers(0, 2**16),
)
def test_preprocess_any_shape(h: int, w: int, size: int, fill: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    fg = {
        "random": rng.random((h, w)) > 0.5,
        "empty": np.zeros((h, w), bool),
        "full": np.ones((h, w), bool),
    }[fill]
    image, grey = preprocess_pair(rgb, fg, size)
    assert image.shape == (size, size, 3) and grey.shape == (size, size)
    assert image.dtype == grey.dtype == np.uint8
    target = binarise_grey(grey)
    assert set(np.unique(target)) <= {0, 1}
    if fill != "random":
        assert (target == int(fill == "full")).all() and canny_map(grey, 10, 1000).sum() == 0
    for edges in (canny_map(image, 10, 1000), canny_map(grey, 10, 1000)):
        assert edges.shape == (size, size) and set(np.unique(edges)) <= {0, 1}


@pytest.mark.parametrize("size", [64, 256])
def test_preprocess_output_is_contiguous(size: int) -> None:
    image, grey = preprocess_pair(*[a if a.ndim == 3 else a > 0 for a in blob_pair()], size)
    assert image.flags.c_contiguous and grey.flags.c_contiguous
