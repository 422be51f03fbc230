"""Large TIFFs read and written band by band, for tiled prediction
(:mod:`msrfnet.inference.tiling`): :class:`TiffRows` reads the pixels through a memory map
(``tifffile.memmap``) when the file stores them uncompressed and contiguous, else decodes one row
of strips or tiles at a time (any compression tifffile reads); :func:`predict_tiff` writes the
mask (and probabilities) into memory-mapped TIFF files allocated before the first write, row band
by row band. Neither the image nor the output is ever held whole in memory."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np

from msrfnet.config import NORMALIZATIONS
from msrfnet.data.io import PERCENTILE_SAMPLE, PERCENTILES
from msrfnet.errors import MSRFError
from msrfnet.inference.tiling import (
    PREVIEW_SIDE,
    Predict,
    iter_probability_rows,
)

__all__ = ["NotStreamable", "TiffRows", "open_tiff_rows", "Preview", "predict_tiff"]


class NotStreamable(Exception):
    """A TIFF that :class:`TiffRows` does not read band by band (the caller reads it whole)."""


class TiffRows:
    """A single-image TIFF as a row source of RGB uint8, read band by band.

    Accepted: one page (no stacks), grey (optionally with an extra sample such as alpha) or RGB(A),
    contiguous or planar samples, unsigned/signed integer or float pixels, any compression
    tifffile decodes. Pixels follow :func:`msrfnet.data.io.read_image`'s rules: alpha (or the
    extra sample) dropped, grey repeated, anything but uint8 stretched to 0–255 by
    ``normalize`` (:func:`msrfnet.data.io.to_uint8`: the image's min–max, or its percentiles from
    the same sample of pixels; the range is found in a first pass over the file, at the first
    read). Anything else raises :class:`NotStreamable`.
    """

    def __init__(self, path: str | Path, normalize: str = "minmax"):
        import tifffile

        if normalize not in NORMALIZATIONS:
            raise MSRFError(f"normalize {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
        self.normalize = normalize
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as e:  # tifffile raises several types on a non-TIFF
            raise NotStreamable(f"not readable by tifffile ({e})") from None
        try:
            self._setup(tifffile)
        except BaseException:
            self._tif.close()
            raise

    def _setup(self, tifffile) -> None:
        pages = self._tif.pages
        if len(pages) != 1:
            raise NotStreamable(f"{len(pages)} pages")
        page = pages[0]
        photometric = int(page.photometric)
        spp = int(page.samplesperpixel)
        if page.imagedepth != 1 or photometric not in (1, 2) or not 1 <= spp <= 4:
            raise NotStreamable("not a grey or RGB image")
        if page.dtype is None or page.dtype.kind not in "uif" or (photometric == 2 and spp < 3):
            raise NotStreamable(f"pixel type {page.dtype}")
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.planar = page.planarconfig == 2 and spp > 1
        self.dtype = np.dtype(page.dtype)
        self.channels = spp
        try:
            self._mm = tifffile.memmap(self.path, page=0, mode="r")
        except (ValueError, OSError):
            self._mm = None
            _ = page.decode  # raises now for a compression tifffile cannot decode
            if page.is_tiled:
                self._ch, self._cw = int(page.tilelength), int(page.tilewidth)
            else:
                self._ch, self._cw = min(int(page.rowsperstrip), self.height), self.width
            self._ny = math.ceil(self.height / self._ch)
            self._nx = math.ceil(self.width / self._cw)
            self._cache: dict[int, np.ndarray] = {}
        self.memory_mapped = self._mm is not None
        self._range: tuple[float, float] | None = None  # found at the first read (not uint8)

    def close(self) -> None:
        self._mm = None
        self._tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # raw pixels, as stored: rows × width (× samples)
    def _chunk_row(self, ty: int) -> np.ndarray:
        if ty in self._cache:
            return self._cache[ty]
        page, fh = self.page, self._tif.filehandle
        y0 = ty * self._ch
        h = min(self._ch, self.height - y0)
        out = np.zeros((h, self.width, self.channels), self.dtype)
        planes = self.channels if self.planar else 1
        for p in range(planes):
            for tx in range(self._nx):
                index = (p * self._ny + ty) * self._nx + tx
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                data = None
                if count:
                    fh.seek(offset)
                    data = fh.read(count)
                seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                if seg is None:
                    continue
                x0 = tx * self._cw
                w = min(self._cw, self.width - x0)
                seg = seg[0, :h, :w]
                if self.planar:
                    out[:, x0 : x0 + w, p] = seg[..., 0]
                else:
                    out[:, x0 : x0 + w] = seg.reshape(seg.shape[0], w, -1)
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        self._cache[ty] = out
        return out

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        if self._mm is not None:
            mm = self._mm
            band = mm[:, start:stop].transpose(1, 2, 0) if self.planar else mm[start:stop]
            return np.asarray(band).reshape(stop - start, self.width, -1)
        parts = [
            self._chunk_row(ty)[max(start - ty * self._ch, 0) : stop - ty * self._ch]
            for ty in range(start // self._ch, (stop - 1) // self._ch + 1)
        ]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _kept(self, raw: np.ndarray) -> np.ndarray:
        """The channels that make the image: grey (the first) or RGB (the first three)."""
        return raw[..., :1] if raw.shape[2] < 3 else raw[..., :3]

    def _find_range(self) -> tuple[float, float]:

        lo, hi, bad = math.inf, -math.inf, 0
        kept_channels = 1 if self.channels < 3 else 3
        row_values = self.width * kept_channels
        every = -(-self.height * row_values // PERCENTILE_SAMPLE)  # to_uint8's sample step
        sample = []
        rows = max(1, (64 << 20) // max(1, self.width * self.channels * self.dtype.itemsize))
        for start in range(0, self.height, rows):
            kept = self._kept(self.raw_rows(start, min(self.height, start + rows)))
            if self.normalize == "percentile":
                sample.append(kept.ravel()[(-start * row_values) % every :: every])
            if self.dtype.kind == "f":
                finite = np.isfinite(kept)
                bad += int(kept.size - np.count_nonzero(finite))
                kept = kept[finite]
            if kept.size:
                lo, hi = min(lo, float(kept.min())), max(hi, float(kept.max()))
        if sample and not bad:
            values = np.concatenate(sample).astype(np.float64)
            p_lo, p_hi = (float(v) for v in np.percentile(values, PERCENTILES))
            if p_hi > p_lo:
                lo, hi = p_lo, p_hi
        if bad:
            raise MSRFError(
                f"{self.path}: {bad} of {self.height * self.width} pixel values are NaN or "
                "infinite (a float image); replace them with numbers: msrf does not guess "
                "what they mean"
            )
        return lo, hi

    def rows(self, start: int, stop: int) -> np.ndarray:
        kept = self._kept(self.raw_rows(start, stop))
        if self.dtype != np.uint8:
            if self._range is None:
                self._range = self._find_range()
            lo, hi = self._range
            if hi <= lo:
                kept = np.zeros(kept.shape, np.uint8)
            else:
                kept = (kept.astype(np.float64) - lo) * (255.0 / (hi - lo))
                kept = np.rint(np.clip(kept, 0, 255)).astype(np.uint8)
        if kept.shape[2] == 1:
            kept = np.repeat(kept, 3, axis=2)
        return np.ascontiguousarray(kept)


def open_tiff_rows(path: str | Path, normalize: str = "minmax") -> TiffRows | None:
    """:class:`TiffRows` of ``path``, or None when it is not a TIFF read band by band."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        return TiffRows(path, normalize)
    except NotStreamable:
        return None


class Preview:
    """A downscaled copy (block means, longest side ≤ ``side``) of an image and its mask, built
    band by band, for the overlay of an image too large to draw whole."""

    def __init__(self, height: int, width: int, side: int = PREVIEW_SIDE):
        self.factor = max(1, math.ceil(max(height, width) / side))
        f = self.factor
        self.height, self.width = math.ceil(height / f), math.ceil(width / f)
        self._rgb = np.zeros((self.height, self.width, 3), np.float64)
        self._mask = np.zeros((self.height, self.width), np.float64)
        self._count = np.zeros((self.height, self.width), np.float64)

    def add(self, start: int, rgb: np.ndarray, mask: np.ndarray) -> None:
        f, (h, w) = self.factor, mask.shape
        pad = self.width * f - w
        ones = np.ones((h, w), np.float64)
        for acc, arr in ((self._rgb, rgb), (self._mask, mask), (self._count, ones)):
            a = np.asarray(arr, np.float64)
            a = np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
            cols = a.reshape(h, self.width, f, *a.shape[2:]).sum(axis=2)
            np.add.at(acc, (start + np.arange(h)) // f, cols)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8, bool mask ≥ half the block) at the preview's size."""
        n = np.maximum(self._count, 1)
        rgb = np.clip(np.rint(self._rgb / n[..., None]), 0, 255).astype(np.uint8)
        return rgb, self._mask / n >= 0.5


def _output_map(tifffile, path, shape, dtype) -> np.ndarray:
    """A new TIFF of ``shape`` × ``dtype`` memory-mapped for writing, its space allocated first:
    a full disk is an ``OSError`` here, not a SIGBUS at the first write into the map."""
    array = tifffile.memmap(path, shape=shape, dtype=dtype, photometric="minisblack")
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it
                    e.filename = str(path)
                    raise
    return array


def predict_tiff(
    source: TiffRows,
    predict: Predict,
    *,
    mask_path: str | Path,
    threshold: float,
    probability_path: str | Path | None = None,
    preview: bool = False,
    **options,
) -> Preview | None:
    """Tiled prediction of a TIFF, written band by band: the 0/255 uint8 mask to ``mask_path``
    and, if given, round(probability × 65535) as uint16 to ``probability_path`` (both TIFF files
    of the image's H×W, memory-mapped while written); ``preview`` also returns a
    :class:`Preview` of the image and mask. Options: those of :func:`iter_probability_rows`."""
    import tifffile

    shape = (source.height, source.width)
    outputs = {"mask": _output_map(tifffile, mask_path, shape, np.uint8)}
    if probability_path is not None:
        outputs["prob"] = _output_map(tifffile, probability_path, shape, np.uint16)
    small = Preview(*shape) if preview else None
    try:
        for start, stop, rows in iter_probability_rows(source, predict, **options):
            mask = rows >= threshold
            outputs["mask"][start:stop] = np.where(mask, np.uint8(255), np.uint8(0))
            if "prob" in outputs:
                outputs["prob"][start:stop] = np.rint(np.clip(rows, 0.0, 1.0) * 65535.0)
            if small is not None:
                small.add(start, source.rows(start, stop), mask)
        for array in outputs.values():
            array.flush()
    finally:
        for key in list(outputs):
            del outputs[key]  # unmaps the file
    return small
