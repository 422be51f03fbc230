"""Pictures for people: a mask tinted over its image (``msrf predict --overlay``, ``msrf test``'s
panels), and PNG encoding of any output array."""

from __future__ import annotations

import math

import cv2
import numpy as np

from msrfnet.errors import MSRFError

__all__ = [
    "PRED_COLOR",
    "TRUTH_COLOR",
    "draw_overlay",
    "display_rgb",
    "encode_png",
    "comparison_panel",
]

PRED_COLOR = (255, 40, 200)  # magenta: visible on both dark fluorescence and pink H&E images
TRUTH_COLOR = (40, 230, 40)


def draw_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = PRED_COLOR,
    *,
    alpha: float = 0.35,
    outline: np.ndarray | None = None,
    outline_color: tuple[int, int, int] = TRUTH_COLOR,
) -> np.ndarray:
    """``rgb`` with ``mask`` tinted and its contour drawn in ``color``; ``outline`` (another mask)
    adds just a contour, e.g. the truth over a prediction. RGB uint8 in and out."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    mask = np.asarray(mask, dtype=bool)
    tint = np.asarray(color, np.float32)
    out[mask] = np.rint((1 - alpha) * out[mask] + alpha * tint).astype(np.uint8)
    thickness = max(1, round(min(out.shape[:2]) / 256))
    for m, c in ((mask, color), (outline, outline_color)):
        if m is not None:
            contours, _ = cv2.findContours(
                np.asarray(m, np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(out, contours, -1, tuple(int(v) for v in c), thickness)
    return out


def display_rgb(rgb: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """``rgb`` auto-contrasted for display only: the ``low``–``high`` percentiles of all channels
    together stretched to 0–255 (one range, so colours keep their balance). A dark fluorescence
    image (nuclei at 20–60 of 255) becomes visible; a well-exposed H&E image barely changes; a
    flat image is returned as is. Never feed the result to the model."""
    arr = np.asarray(rgb)
    lo, hi = (float(v) for v in np.percentile(arr, (low, high)))
    if hi - lo < 1:
        return np.array(arr, dtype=np.uint8, copy=True)
    out = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """A grey (uint8/uint16) or RGB uint8 array as PNG bytes (for :mod:`msrfnet.safe_output`)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8/uint16 array
        raise MSRFError("could not encode a PNG")
    return buf.tobytes()


def comparison_panel(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, caption: str, min_side: int = 256
) -> np.ndarray:
    """image | truth | prediction, enlarged (nearest) to at least ``min_side`` px, and a caption;
    the image auto-contrasted for display (:func:`display_rgb`: dark fluorescence fields show)."""
    image = display_rgb(image)
    f = max(1, math.ceil(min_side / max(1, min(image.shape[:2]))))
    big = lambda a: np.repeat(np.repeat(a, f, axis=0), f, axis=1)  # noqa: E731
    img, gt, pr = big(image), big(truth), big(pred)
    panels = [
        img,
        draw_overlay(img, gt, TRUTH_COLOR),
        draw_overlay(img, pr, PRED_COLOR, outline=gt),
    ]
    gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
    body = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    strip = np.zeros((22, body.shape[1], 3), np.uint8)
    cv2.putText(
        strip, caption, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
    )
    return np.concatenate([strip, body], axis=0)
