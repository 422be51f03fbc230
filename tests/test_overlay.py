"""``msrfnet.overlay``: the figures people look at (msrf test / evaluate overlays, the training's
predictions.png) show dark fluorescence fields auto-contrasted, and never change the input."""

from __future__ import annotations

import numpy as np

from msrfnet.overlay import comparison_panel


def test_comparison_panel_shows_a_dark_field():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 12, (32, 32, 3), dtype=np.uint8)  # a dim background
    image[8:16, 8:16] = 40  # a dim nucleus: 40 of 255
    truth = np.zeros((32, 32), bool)
    truth[8:16, 8:16] = True
    kept = image.copy()
    panel = comparison_panel(image, truth, truth, "caption", min_side=64)
    assert np.array_equal(image, kept)  # the caller's pixels are untouched
    f = 2  # 32 px enlarged to 64
    body = panel[-32 * f :, : 32 * f]  # the first third under the caption: the image itself
    assert body.shape == (64, 64, 3)
    nucleus = body[8 * f : 16 * f, 8 * f : 16 * f]
    assert nucleus.min() >= 200  # stretched from 40 to near white
    assert body[: 6 * f, : 6 * f].max() < 100  # the background stays dark
