"""Tiled prediction at a stated scale: overlapping windows, Gaussian-weighted blending.

The image (optionally resampled by ``scale`` first, :mod:`msrfnet.data.resample`) is covered by
``tile`` × ``tile`` windows that overlap by at least ``overlap`` of their side, spaced evenly
between the first and the last (which touch the image's edges). Each window goes through the
runner exactly as a training image or crop would: its RGB uint8 pixels and the Canny map **of the
window** (:func:`msrfnet.data.preprocess.canny_map`), so a pixel near a window's border sees the
Canny of that window, as a pixel near the border of a training crop does. The window's
probabilities are accumulated with a Gaussian weight (σ = ``tile``/8, MONAI's
``sliding_window_inference`` default: centre pixels count most, a window's border least) in
float32 sums of weight × probability and of weight, and the blended map is their ratio. An
image smaller than the window in a dimension is reflected up to the window size, and the
padding is cut away again. The probability map is resampled back to the image's own H×W with
bilinear interpolation (as the resize protocol's).

Memory: windows are processed one row of windows at a time, and the sums only hold the rows that
the windows of that row cover (``tile`` rows of the image's width); finished rows leave as soon as
no later window touches them. So, beyond the image and the outputs, memory does not grow with the
image's size. TIFF files go further (:mod:`msrfnet.inference.tiff_rows`): read through a memory
map or one row of strips at a time, and the mask written band by band into a memory-mapped TIFF,
so that neither the image nor the output is ever held whole in memory.

A *predict* function is the runner protocol of :mod:`msrfnet.inference.runners`:
``predict(images uint8 B×3×S×S, canny uint8 B×1×S×S) -> float32 B×S×S``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from msrfnet.data.preprocess import canny_map
from msrfnet.data.resample import rescale_rows, scaled_size
from msrfnet.option_groups import DEFAULT_OVERLAP, Tiling

__all__ = [
    "SIGMA_SCALE",
    "tile_starts",
    "gaussian_weight",
    "ArrayRows",
    "iter_probability_rows",
    "predict_tiled",
]

#: σ of the blending weight as a share of the window's side (MONAI's default).
SIGMA_SCALE = 0.125
#: Longest side of the downscaled overlay written for a streamed TIFF.
PREVIEW_SIDE = 2048

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]
Band = tuple[int, int, np.ndarray]


def tile_starts(length: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> list[int]:
    """Start offsets of windows of ``tile`` covering ``length`` (≥ ``tile``) with neighbours
    overlapping by at least ``overlap`` × ``tile``, evenly spread: the first at 0, the last at
    ``length − tile``."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / step) + 1
    return [int(v) for v in np.round(np.linspace(0, length - tile, count))]


def gaussian_weight(tile: int, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """``tile`` × ``tile`` float32 Gaussian, 1 at the centre, σ = ``sigma_scale`` × ``tile``
    (at the window's corners ≈ 1e-7, never 0: every pixel keeps a positive weight)."""
    centre = (tile - 1) / 2.0
    sigma = sigma_scale * tile
    g = np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)
    w = np.outer(g, g)
    return (w / w.max()).astype(np.float32)


# --- row sources: an image read one band of rows at a time ---------------------------------


class ArrayRows:
    """An RGB uint8 H×W×3 array in memory as a row source."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.height, self.width = rgb.shape[:2]

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.rgb[start:stop]


class ScaledRows:
    """A row source resampled by ``scale`` (:func:`msrfnet.data.resample.rescale_rows`)."""

    def __init__(self, base, scale: float):
        self.base, self.scale = base, scale
        self.height, self.width = scaled_size(base.height, base.width, scale)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return rescale_rows(
            self.base.rows,
            (self.base.height, self.base.width),
            (self.height, self.width),
            start,
            stop,
        )


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into [0, n) without repeating the edge (numpy's ``reflect``)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    i = np.mod(index, period)
    return np.where(i >= n, period - i, i)


class PaddedRows:
    """A row source reflected at its bottom and right up to at least ``height`` × ``width``."""

    def __init__(self, base, height: int, width: int):
        self.base = base
        self.height, self.width = max(base.height, height), max(base.width, width)
        self._cols = _reflect(np.arange(self.width), base.width)

    def rows(self, start: int, stop: int) -> np.ndarray:
        index = _reflect(np.arange(start, stop), self.base.height)
        lo, hi = int(index.min()), int(index.max()) + 1
        band = np.asarray(self.base.rows(lo, hi))[index - lo]
        return band if self.width == self.base.width else band[:, self._cols]


# --- the sliding window ---------------------------------------------------------------------


def iter_blended_rows(
    source,
    predict: Predict,
    *,
    tile: int,
    overlap: float = DEFAULT_OVERLAP,
    canny: tuple[float, float] = (10, 1000),
    batch_size: int = 8,
) -> Iterator[Band]:
    """Blended probabilities of ``source`` (at least ``tile`` × ``tile``), as consecutive bands
    ``(start, stop, float32 rows × width)`` covering every row once, in order."""
    height, width = source.height, source.width
    if height < tile or width < tile:
        raise ValueError(f"source {height}×{width} is smaller than the tile {tile}")
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    weight = gaussian_weight(tile)
    acc = np.zeros((tile, width), np.float32)
    wsum = np.zeros((tile, width), np.float32)
    low, high = canny
    for k, y in enumerate(ys):
        band = np.asarray(source.rows(y, y + tile))
        for i in range(0, len(xs), batch_size):
            chunk = xs[i : i + batch_size]
            tiles = np.stack([band[:, x : x + tile] for x in chunk])
            edges = np.stack([canny_map(t, low, high) for t in tiles])[:, None]
            probs = predict(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2)), edges)
            for x, p in zip(chunk, probs):
                acc[:, x : x + tile] += p * weight
                wsum[:, x : x + tile] += weight
        done = (ys[k + 1] if k + 1 < len(ys) else height) - y
        yield y, y + done, acc[:done] / wsum[:done]
        if done < tile:  # the rows the next row of windows shares move up
            acc[: tile - done] = acc[done:]
            wsum[: tile - done] = wsum[done:]
        acc[tile - done :] = 0
        wsum[tile - done :] = 0


def _linear(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of ``n_out`` centre-aligned positions in ``n_in`` (OpenCV's
    ``INTER_LINEAR``): lower index, upper index, weight of the upper."""
    s = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (s - i0).astype(np.float32)


def iter_resampled_rows(
    bands: Iterator[Band], in_shape: tuple[int, int], out_shape: tuple[int, int]
) -> Iterator[Band]:
    """Consecutive bands of an ``in_shape`` map, bilinearly resampled to ``out_shape``, as
    consecutive bands; only the input rows still needed are kept."""
    (hi, wi), (ho, wo) = in_shape, out_shape
    if (hi, wi) == (ho, wo):
        yield from bands
        return
    r0, r1, rf = _linear(hi, ho)
    c0, c1, cf = _linear(wi, wo)
    buf, first, y = np.zeros((0, wi), np.float32), 0, 0
    for _start, stop, rows in bands:
        buf = np.concatenate([buf, rows]) if len(buf) else rows
        end = ho if stop >= hi else int(np.searchsorted(r1, stop, side="left"))
        if end > y:
            a, b = buf[r0[y:end] - first], buf[r1[y:end] - first]
            col = a + (b - a) * rf[y:end, None]
            yield y, end, col[:, c0] + (col[:, c1] - col[:, c0]) * cf
            y = end
        if y < ho:
            drop = int(r0[y]) - first
            buf, first = buf[drop:], first + drop


def iter_probability_rows(
    source,
    predict: Predict,
    *,
    tile: int,
    overlap: float = DEFAULT_OVERLAP,
    scale: float | None = None,
    canny: tuple[float, float] = (10, 1000),
    batch_size: int = 8,
) -> Iterator[Band]:
    """The tiled probability map of ``source`` (a row source: ``height``, ``width``,
    ``rows(start, stop)`` → RGB uint8), at the source's own size, band by band in order; the
    options follow :class:`~msrfnet.option_groups.Tiling`'s rules (a scale of 1 is native)."""
    checked = Tiling(tile, overlap, scale)
    tile, overlap, scale = checked.tile, checked.overlap, checked.scale
    scaled = ScaledRows(source, scale) if scale is not None else source
    hs, ws = scaled.height, scaled.width
    padded = PaddedRows(scaled, tile, tile) if hs < tile or ws < tile else scaled
    bands = iter_blended_rows(
        padded, predict, tile=tile, overlap=overlap, canny=canny, batch_size=batch_size
    )
    cropped = ((a, min(b, hs), r[: min(b, hs) - a, :ws]) for a, b, r in bands if a < hs)
    yield from iter_resampled_rows(cropped, (hs, ws), (source.height, source.width))


def predict_tiled(rgb: np.ndarray, predict: Predict, **options) -> np.ndarray:
    """H×W float32 probabilities of an RGB uint8 image held in memory (options: those of
    :func:`iter_probability_rows`)."""
    out = np.empty(rgb.shape[:2], np.float32)
    for start, stop, rows in iter_probability_rows(ArrayRows(rgb), predict, **options):
        out[start:stop] = rows
    return out
