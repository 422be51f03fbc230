"""Pre-processing exactly as the original ``utils.get_image`` (spec §2.1–2.2).

* image: RGB uint8, resized to S×S with Pillow Lanczos (the old ``Image.ANTIALIAS``); aspect ratio
  is not kept;
* mask: a 0/255 grey ("L") image resized the same way. The original converts the mask file to "L"
  directly; here the mask is binarised first (:func:`msrfnet.data.io.binarise_mask`) so that 0/1
  and label masks work — for the usual 0/255 masks the two are identical;
* binary target = resized grey / 255 ≥ 0.5, i.e. grey ≥ 128;
* image-gradient input = ``cv2.Canny(resized RGB uint8, 10, 1000) / 255`` — OpenCV takes the
  strongest channel's gradient on a 3-channel input, as the original does;
* edge target = ``cv2.Canny(resized grey mask uint8, 10, 1000) / 255``, on the anti-aliased grey
  mask, not the binarised one.

Canny maps are computed per sample in the Dataset (after augmentation), never cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from msrfnet.data.io import foreground_to_grey

__all__ = [
    "LANCZOS",
    "resize_image",
    "resize_mask",
    "preprocess_pair",
    "binarise_grey",
    "canny_map",
    "model_inputs",
]

LANCZOS = Image.Resampling.LANCZOS  # == Image.ANTIALIAS of Pillow < 10


def resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an H×W×3 uint8 RGB image to size×size×3 with Pillow Lanczos."""
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).resize((size, size), LANCZOS)
    )


def resize_mask(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize an H×W uint8 grey (0/255) mask to size×size, Pillow Lanczos (stays anti-aliased)."""
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8)).resize((size, size), LANCZOS)
    )


def preprocess_pair(
    rgb: np.ndarray, foreground: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The cached form of one sample: (resized RGB uint8 S×S×3, resized grey mask uint8 S×S)."""
    return resize_image(rgb, size), resize_mask(foreground_to_grey(foreground), size)


def binarise_grey(grey: np.ndarray) -> np.ndarray:
    """The original's binary target: grey / 255 ≥ 0.5, as uint8 {0, 1}."""
    return (grey >= 128).astype(np.uint8)


def canny_map(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``cv2.Canny(image, low, high) / 255`` as uint8 {0, 1}; ``image`` is S×S×3 or S×S uint8.

    The defaults of the original apply: 3×3 Sobel aperture and the L1 gradient norm.
    """
    edges = cv2.Canny(np.ascontiguousarray(image), low, high)
    return (edges > 0).astype(np.uint8)


def model_inputs(
    rgb: Sequence[np.ndarray], size: int, canny_low: float, canny_high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Training's pre-processing of RGB uint8 images: (uint8 B×3×S×S, uint8 {0,1} B×1×S×S)."""
    resized = [resize_image(r, size) for r in rgb]
    canny = [canny_map(r, canny_low, canny_high) for r in resized]
    return np.stack(resized).transpose(0, 3, 1, 2), np.stack(canny)[:, None]
