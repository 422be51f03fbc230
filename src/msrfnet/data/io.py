"""Reading images and masks from disk (pairing them by file stem: :mod:`msrfnet.data.files`).

Every reader returns plain numpy arrays and turns any decoding failure into a one-line
:class:`~msrfnet.errors.MSRFError` that names the file, so a bad file in a 600-image folder is
found by name rather than by a Pillow traceback.

Rules (documented in the user docs; tests pin each one):

* **Formats**: png, jpg, jpeg, tif, tiff, bmp, extensions case-insensitive. Pillow decodes; OpenCV
  is used only for 16-bit colour files (Pillow silently drops them to 8 bit) and as a fallback for
  TIFF compressions Pillow lacks.
* **Images** become H×W×3 uint8 RGB: alpha is dropped (not composited, as ``convert("RGB")`` in the
  original), grey is repeated into three channels, palette images are expanded.
  **16-bit / 32-bit / float images are stretched from their own min–max range to 0–255**, not
  divided by 257: microscopy cameras typically fill 12 of the 16 bits, and /257 would leave such an
  image nearly black (and without Canny edges). A constant image becomes all zeros. With
  ``normalize="percentile"`` (``msrf train --normalize percentile``, recorded in the checkpoint
  and applied the same way at inference) the 1–99.8 % percentile range is stretched instead and
  the rest clipped, so a few hot pixels do not darken the whole image (:func:`to_uint8`).
* **Masks** become one grey channel (RGB via Pillow's "L" luma, as the original; palette masks keep
  their indices) and then a boolean foreground:

  - with ``mask_threshold`` given: foreground = value > threshold;
  - otherwise, an *instance label image* (one channel of 16-bit or wider integers, 0 = background
    and one id per object, as napari, Cellpose, StarDist and QuPath export them; see
    :func:`is_instance_label_mask`) gives foreground = label > 0;
  - otherwise the *nominal range* R is 1 if max ≤ 1 (a 0/1 or [0, 1] mask), else 255 if max ≤ 255,
    else 65535 (else the max), and foreground = value > R/2. So 0/255, 0/1, 0/65535 and JPEG-noisy
    0/255 masks all work;
  - a mask that looks like a label map raises instead of being silently mis-binarised (see
    :func:`label_map_reason`); a non-finite ``mask_threshold`` raises;
  - a multi-page file (TIFF) is refused as a mask; an image uses its first page.
* **Refused with one line**: a float image or mask with NaN or infinite pixels (not stretched into
  a black image); a file that cannot be read (permission, I/O error) is said to be unreadable, not
  corrupt.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from msrfnet.config import NORMALIZATIONS
from msrfnet.errors import MSRFError
from msrfnet.safe_output import describe_os_error

__all__ = [
    "LABEL_MAP_MIN_FRACTION",
    "read_raw",
    "PERCENTILES",
    "PERCENTILE_SAMPLE",
    "to_uint8",
    "read_image",
    "rgb_uint8",
    "check_finite",
    "mask_channel",
    "nominal_range",
    "label_map_reason",
    "is_instance_label_mask",
    "count_objects",
    "check_mask_threshold",
    "binarise_mask",
    "read_mask",
    "is_label_image",
    "read_labels",
    "foreground_to_grey",
]

# A label value has to fill this share of the pixels to count as "well populated"; JPEG ringing
# and anti-aliasing spread their in-between values thinly over many grey levels instead.
LABEL_MAP_MIN_FRACTION = 0.01

_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


_quiet_lock = threading.Lock()
_quiet_users = 0
_saved_level = 0


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's stderr log while decoding: a failure is reported as one MSRFError line.

    The log level is process-global, so concurrent decoders (check-data's threads) share one
    silenced period and the last to leave restores the level.
    """
    import cv2

    global _quiet_users, _saved_level
    with _quiet_lock:
        if _quiet_users == 0:
            _saved_level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                cv2.utils.logging.setLogLevel(_saved_level)


def _decode_cv2(data: bytes) -> np.ndarray | None:
    """Decode a file's bytes with OpenCV keeping depth and channels, as RGB(A) order; None if it
    cannot."""
    import cv2

    with _quiet_opencv():
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        return None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(arr)


def _pil_to_array(im: Image.Image, *, keep_indices: bool) -> np.ndarray:
    """A loaded Pillow image as H×W (grey) or H×W×3/4 (RGB/RGBA) array, depth preserved."""
    mode = im.mode
    if mode in _HIGH_DEPTH_MODES or mode in ("L", "RGB", "RGBA"):
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im).astype(np.uint8) * np.uint8(255)
    if mode == "LA":
        return np.asarray(im)[:, :, 0]
    if mode in ("P", "PA") and keep_indices:
        return np.asarray(im if mode == "P" else im.convert("P"))
    return np.asarray(im.convert("RGB"))


def read_raw(
    path: str | Path, *, name: str | None = None, keep_indices: bool = False
) -> np.ndarray:
    """Decode ``path`` fully into an array: H×W or H×W×C (RGB order), dtype as stored.

    The full decode (not just the header) is what catches truncated files. ``keep_indices`` (masks)
    keeps palette indices instead of expanding to colours and refuses multi-page files. Raises
    :class:`MSRFError` naming the file (``name`` if given) when it is missing, empty, cannot be
    read (permission, I/O error: said as such, the content may be fine), is not a readable image
    (corrupt), or is a float image with NaN/infinite pixels.
    """

    path = Path(path)
    label = name or str(path)
    if not path.is_file():
        raise MSRFError(f"{label}: file not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MSRFError(f"{label}: cannot read the file ({describe_os_error(err)})") from None
    if not data:
        raise MSRFError(f"{label}: empty file (0 bytes)")
    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    try:
        with Image.open(io.BytesIO(data)) as im:
            pages = getattr(im, "n_frames", 1)
            if keep_indices and pages > 1:
                raise MSRFError(
                    f"{label}: {pages} pages (a multi-page file); a mask must be a "
                    "single image: save the page that holds the mask on its own"
                )
            # The raw mode is only visible before load(): Pillow reads 16-bit colour as 8-bit.
            raw_modes = " ".join(str(t.args) for t in im.tile)
            im.load()
            if im.mode in ("RGB", "RGBA") and ";16" in raw_modes:
                arr = _decode_cv2(data)
                if arr is None:
                    raise OSError("16-bit colour image OpenCV cannot decode")
                return check_finite(arr, label)
            return check_finite(_pil_to_array(im, keep_indices=keep_indices), label)
    except UnidentifiedImageError:
        reason = (
            "not a readable image file "
            "(wrong extension, damaged header, or a format Pillow cannot read)"
        )
    except Image.DecompressionBombError as err:
        # a header claiming more than 2 × PIL.Image.MAX_IMAGE_PIXELS: refused before any decoding
        # (and never handed to OpenCV, which would try to allocate it)
        raise MSRFError(f"{label}: image too large to decode safely ({err})") from None
    except MSRFError:
        raise
    except Exception as err:  # decoders raise OSError, ValueError, SyntaxError, EOFError, ...
        reason = f"corrupt or truncated image ({err})"
    if is_tiff:
        arr = _decode_cv2(data)
        if arr is not None:
            return check_finite(arr, label)
    raise MSRFError(f"{label}: {reason}")


def check_finite(arr: np.ndarray, label: str) -> np.ndarray:
    """``arr``, or a one-line error naming ``label`` for a float image with NaN or infinite pixels
    (stretched to uint8 they would silently turn the whole image black)."""
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise MSRFError(
                f"{label}: {bad} of {arr.size} pixel values are NaN or infinite (a "
                "float image); replace them with numbers: msrf does not guess what "
                "they mean"
            )
    return arr


#: The percentile range of ``normalize="percentile"``.
PERCENTILES = (1.0, 99.8)
#: Percentiles are estimated from at most this many evenly spaced pixels (exact below it).
PERCENTILE_SAMPLE = 4_000_000


def to_uint8(arr: np.ndarray, normalize: str = "minmax") -> np.ndarray:
    """Map any-depth pixels to uint8, the one rule of training and inference: uint8 unchanged;
    anything else stretched to 0–255 from its min–max range (``"minmax"``) or from its
    :data:`PERCENTILES` range, values outside clipped (``"percentile"``; an image whose
    percentiles coincide falls back to min–max). All channels share one range, so colours keep
    their balance; a constant image becomes zeros."""

    if normalize not in NORMALIZATIONS:
        raise MSRFError(f"normalize {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if normalize == "percentile":
        flat = a.ravel()
        step = -(-flat.size // PERCENTILE_SAMPLE)
        p_lo, p_hi = (float(v) for v in np.percentile(flat[::step], PERCENTILES))
        if p_hi > p_lo:
            lo, hi = p_lo, p_hi
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint(np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)


def read_image(
    path: str | Path, *, name: str | None = None, normalize: str = "minmax"
) -> np.ndarray:
    """Read an image as H×W×3 uint8 RGB (alpha dropped, grey repeated, high depth stretched by
    ``normalize``: see :func:`to_uint8`)."""
    return rgb_uint8(read_raw(path, name=name), normalize)


def rgb_uint8(arr: np.ndarray, normalize: str = "minmax") -> np.ndarray:
    """Decoded pixels (H×W or H×W×C, C ≥ 3) as contiguous H×W×3 uint8 RGB: alpha dropped, high
    depth stretched by ``normalize`` (:func:`to_uint8`), grey repeated. The one rule for files
    (:func:`read_image`) and in-memory images (``msrfnet.inference.segmenter.as_rgb``)."""
    if arr.ndim == 3:
        arr = arr[:, :, :3]
    arr = to_uint8(arr, normalize)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def mask_channel(arr: np.ndarray) -> np.ndarray:
    """One grey channel of a decoded mask: RGB(A) → Pillow "L" luma (8-bit) or the same weights."""
    if arr.ndim == 2:
        return arr
    rgb = arr[:, :, :3]
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def nominal_range(grey: np.ndarray) -> float:
    """The range a mask's values are drawn from: 1 (0/1 masks), 255, 65535, or the max itself."""
    top = float(grey.max()) if grey.size else 0.0
    if top <= 1:
        return 1.0
    if top <= 255:
        return 255.0
    if top <= 65535:
        return 65535.0
    return top


def _value_fractions(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if grey.dtype.kind in "bu" and grey.dtype.itemsize <= 2:
        counts = np.bincount(grey.ravel().astype(np.intp, copy=False))
        values = np.flatnonzero(counts)
        return values, counts[values] / grey.size
    values, counts = np.unique(grey, return_counts=True)
    return values, counts / grey.size


def label_map_reason(grey: np.ndarray) -> str | None:
    """Why ``grey`` looks like a label map rather than a binary mask, or None if it looks binary.

    A label map is flagged when (a) some value strictly between 10 % and 90 % of the mask's max
    fills more than 1 % of the pixels (0/1/2/3 classes, 0/128/255 with a boundary class), or
    (b) the max lies below the binarisation threshold R/2 while over 1 % of pixels are non-zero
    (instance labels 0..N: half-range binarisation would return an empty mask). JPEG noise and
    anti-aliasing pass: their in-between values sit at edges and spread thinly over many levels.
    """
    if grey.size == 0:
        return None
    values, fractions = _value_fractions(grey)
    top = float(values[-1])
    if top <= 1:
        return None
    middle = (values > 0.1 * top) & (values < 0.9 * top) & (fractions > LABEL_MAP_MIN_FRACTION)
    nonzero = float(fractions[values > 0].sum())
    if not middle.any() and not (
        top <= nominal_range(grey) / 2 and nonzero > LABEL_MAP_MIN_FRACTION
    ):
        return None
    order = np.argsort(-fractions)[:5]
    shown = ", ".join(
        f"{values[i]:g} ({100 * fractions[i]:.1f}%)" for i in sorted(order, key=lambda i: values[i])
    )
    more = f" and {len(values) - len(order)} more" if len(values) > len(order) else ""
    return f"looks like a label map, not a binary mask (values {shown}{more})"


def is_instance_label_mask(grey: np.ndarray) -> bool:
    """Whether a one-channel mask is an instance label image, read as foreground = label > 0.

    Told by dtype and value range: integers of 16 bits or more (8-bit files keep the label-map
    refusal: a 0/1/2/3 class map is as likely as instances there), no negative value, a max of at
    least 2 (0/1 masks binarise alike either way), and a max that the half-range rule would lose:
    at most half the nominal range (ids up to 32767 in a uint16 file; a 0/65535 or anti-aliased
    16-bit mask keeps the binary rule), or above 65535 in a 32/64-bit file."""
    if grey.ndim != 2 or grey.dtype.kind not in "iu" or grey.dtype.itemsize < 2 or not grey.size:
        return False
    low, top = int(grey.min()), int(grey.max())
    if low < 0 or top < 2:
        return False
    return top <= nominal_range(grey) / 2 or (grey.dtype.itemsize >= 4 and top > 65535)


def count_objects(labels: np.ndarray) -> int:
    """The number of distinct non-zero ids of a label image (its objects)."""
    values = np.unique(labels)
    return int(np.count_nonzero(values))


def check_mask_threshold(mask_threshold: float) -> float:
    """``mask_threshold`` if it is a finite number, else a one-line error naming the option."""
    if not np.isfinite(mask_threshold):
        raise MSRFError(
            f"--mask-threshold {mask_threshold}: must be a finite number "
            "(foreground = mask value > T)"
        )
    return mask_threshold


def binarise_mask(
    grey: np.ndarray, *, mask_threshold: float | None = None, name: str = "mask"
) -> np.ndarray:
    """Foreground (bool H×W) of a one-channel mask by the module's rules; raises on label maps."""
    if mask_threshold is not None:
        return grey > check_mask_threshold(mask_threshold)
    if is_instance_label_mask(grey):
        return grey > 0
    reason = label_map_reason(grey)
    if reason is not None:
        raise MSRFError(
            f"{name}: {reason}; binary masks must be 0/255 or 0/1 (instance label images: "
            "16-bit, 0 = background) — set mask_threshold "
            "(--mask-threshold T) to take value > T as foreground"
        )
    return grey > nominal_range(grey) / 2


def read_mask(
    path: str | Path, *, mask_threshold: float | None = None, name: str | None = None
) -> np.ndarray:
    """Read a mask file as a boolean H×W foreground array (the rules: the module docstring)."""
    label = name or str(path)
    grey = mask_channel(read_raw(path, name=label, keep_indices=True))
    return binarise_mask(grey, mask_threshold=mask_threshold, name=label)


def is_label_image(arr: np.ndarray) -> bool:
    """Whether a decoded file is an instance label image (0 = background, each other value one
    object) rather than a binary mask: one channel of integers with more than one non-zero value,
    and, for 8-bit files, values that :func:`label_map_reason` does not take for a noisy binary
    mask (JPEG ringing also spreads over many values, but thinly). A label image holding a single
    object cannot be told from a 0/1 mask; a folder decides (``msrf evaluate``)."""
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        return False
    values = np.unique(arr)
    if np.count_nonzero(values) < 2:
        return False
    return arr.dtype.itemsize > 1 or label_map_reason(arr) is not None


def read_labels(path: str | Path, *, name: str | None = None) -> np.ndarray:
    """Read an instance label image (uint16 PNG/TIFF, or any one-channel integer file) as H×W
    integers; a colour, float, negative or multi-page file is refused with one line."""
    label = name or str(path)
    arr = read_raw(path, name=label, keep_indices=True)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        kind = "colour" if arr.ndim == 3 else str(arr.dtype)
        raise MSRFError(
            f"{label}: a {kind} image, not a label image (one channel of integers: 0 = "
            "background, 1..N one object each)"
        )
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise MSRFError(f"{label}: negative values; a label image holds 0 (background) and 1..N")
    return arr


def foreground_to_grey(foreground: np.ndarray) -> np.ndarray:
    """A boolean mask as the 0/255 uint8 grey image the original resizes."""
    return np.where(foreground, np.uint8(255), np.uint8(0))
