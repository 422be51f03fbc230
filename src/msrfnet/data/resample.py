"""Resampling by a factor (``--scale``) that gives the same pixels whole or band by band.

Native-scale training (``msrf train --patch-size P --scale S``) resamples each image by S before
cropping, and tiled prediction (``msrf predict --scale S``) resamples the image by S before
tiling, possibly one band of rows at a time (a large TIFF read through a memory map). Both use
:func:`rescale` / :func:`rescale_rows`, so the model sees at inference exactly the pixels it was
trained on, and a band-by-band result equals the whole-image one bit for bit.

The filter is Lanczos-3 (Pillow's ``LANCZOS``: ``sinc(x)·sinc(x/3)``, widened by the reduction
factor when shrinking, so a downscale is anti-aliased), applied separably in float32 with each
output row's weights depending only on its own coordinate, then rounded to uint8. Pixel centres
are aligned (``src = (dst + 0.5) / S``), as in Pillow and OpenCV. It is not Pillow's two-pass
8-bit resize bit for bit (no rounding between the passes); the paper's resize protocol keeps
Pillow (:func:`msrfnet.data.preprocess.resize_image`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

__all__ = ["scaled_size", "rescale", "rescale_rows"]

LANCZOS_SUPPORT = 3.0


def scaled_size(height: int, width: int, scale: float | None) -> tuple[int, int]:
    """(H, W) of an image of ``height`` × ``width`` resampled by ``scale`` (at least 1 pixel)."""
    if scale is None or scale == 1.0:
        return int(height), int(width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _lanczos(x: np.ndarray) -> np.ndarray:
    out = np.sinc(x) * np.sinc(x / LANCZOS_SUPPORT)
    out[np.abs(x) >= LANCZOS_SUPPORT] = 0.0
    return out


@lru_cache(maxsize=64)
def _weights(n_in: int, n_out: int, start: int, stop: int):
    """Sparse (stop − start) × n_in matrix: output samples ``start``…``stop − 1`` of an
    ``n_in`` → ``n_out`` resampling, each row summing to 1."""
    from scipy.sparse import csr_matrix

    ratio = n_in / n_out
    widen = max(ratio, 1.0)
    support = LANCZOS_SUPPORT * widen
    centre = (np.arange(start, stop, dtype=np.float64) + 0.5) * ratio
    first = np.maximum(np.floor(centre - support + 0.5).astype(np.int64), 0)
    last = np.minimum(np.floor(centre + support + 0.5).astype(np.int64), n_in)  # exclusive
    taps = int((last - first).max())
    cols = first[:, None] + np.arange(taps)[None, :]
    valid = cols < last[:, None]
    w = _lanczos((cols + 0.5 - centre[:, None]) / widen) * valid
    w /= w.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(stop - start), taps)
    m = csr_matrix(
        (w.ravel()[valid.ravel()], (rows[valid.ravel()], cols.ravel()[valid.ravel()])),
        shape=(stop - start, n_in),
        dtype=np.float32,
    )
    return m, int(first.min()), int(last.max())


def source_rows(n_in: int, n_out: int, start: int, stop: int) -> tuple[int, int]:
    """The input rows [a, b) that output rows [start, stop) are computed from."""
    _, a, b = _weights(n_in, n_out, start, stop)
    return a, b


def rescale_rows(
    read: Callable[[int, int], np.ndarray],
    in_shape: tuple[int, int],
    out_shape: tuple[int, int],
    start: int,
    stop: int,
) -> np.ndarray:
    """Output rows [start, stop) of the ``in_shape`` → ``out_shape`` resampling of an image whose
    input rows [a, b) ``read(a, b)`` returns (uint8, b − a × W or b − a × W × C)."""
    (h, w), (hs, ws) = in_shape, out_shape
    wy, a, b = _weights(h, hs, start, stop)
    band = np.asarray(read(a, b))
    channels = band.shape[2:] if band.ndim == 3 else ()
    flat = band.reshape(b - a, -1).astype(np.float32)
    tall = np.asarray(wy[:, a:b] @ flat)  # (stop − start) × (W·C)
    if ws != w:
        wx, _, _ = _weights(w, ws, 0, ws)
        c = int(np.prod(channels)) if channels else 1
        cols = tall.reshape(stop - start, w, c).transpose(1, 0, 2).reshape(w, -1)
        tall = np.asarray(wx @ cols).reshape(ws, stop - start, c).transpose(1, 0, 2)
    out = np.clip(np.rint(tall), 0, 255).astype(np.uint8)
    return out.reshape(stop - start, ws, *channels)


def rescale(image: np.ndarray, scale: float | None) -> np.ndarray:
    """``image`` (uint8 H×W or H×W×C) resampled by ``scale`` (``None`` or 1: returned as is)."""
    if scale is None or scale == 1.0:
        return image
    h, w = image.shape[:2]
    hs, ws = scaled_size(h, w, scale)
    return rescale_rows(lambda a, b: image[a:b], (h, w), (hs, ws), 0, hs)
