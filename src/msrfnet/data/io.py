"""Reading images and masks from disk, and pairing them by file stem.

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
  image nearly black (and without Canny edges). A constant image becomes all zeros.
* **Masks** become one grey channel (RGB via Pillow's "L" luma, as the original; palette masks keep
  their indices) and then a boolean foreground:

  - with ``mask_threshold`` given: foreground = value > threshold;
  - otherwise the *nominal range* R is 1 if max ≤ 1 (a 0/1 or [0, 1] mask), else 255 if max ≤ 255,
    else 65535 (else the max), and foreground = value > R/2. So 0/255, 0/1, 0/65535 and JPEG-noisy
    0/255 masks all work;
  - a mask that looks like a label map raises instead of being silently mis-binarised (see
    :func:`label_map_reason`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MSRFError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# A label value has to fill this share of the pixels to count as "well populated"; JPEG ringing
# and anti-aliasing spread their in-between values thinly over many grey levels instead.
LABEL_MAP_MIN_FRACTION = 0.01

_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


@dataclass(frozen=True)
class Pair:
    """One sample on disk: an image and its mask sharing the file stem ``stem``."""

    stem: str
    image: Path
    mask: Path


@dataclass
class Pairing:
    """The result of pairing an ``images/`` folder with a ``masks/`` folder.

    ``pairs`` are sorted by stem; ``problems`` holds one line per unpaired or ambiguous file.
    """

    pairs: list[Pair]
    problems: list[str]


def display_name(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` when it lies inside it (for messages), else as given."""
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return str(path)


def is_image_file(path: Path) -> bool:
    """A visible regular file with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (hidden and other files skipped)."""
    return sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: p.name)


def pair_files(images_dir: Path, masks_dir: Path, *, base: Path | None = None) -> Pairing:
    """Pair ``images_dir`` with ``masks_dir`` by file stem (``a.jpg`` ↔ ``a.png``), sorted by stem.

    Unpaired files and stems that occur twice in one folder (``a.png`` and ``a.jpg``) are reported
    in :attr:`Pairing.problems` with paths relative to ``base``; the rest are paired.
    """
    problems: list[str] = []
    by_stem: list[dict[str, Path]] = []
    ambiguous: set[str] = set()
    for folder in (images_dir, masks_dir):
        groups: dict[str, list[Path]] = defaultdict(list)
        for path in list_image_files(folder):
            groups[path.stem].append(path)
        unique: dict[str, Path] = {}
        for stem, paths in groups.items():
            if len(paths) > 1:
                names = ", ".join(display_name(p, base) for p in paths)
                problems.append(f"{names}: several files share the stem {stem!r}; keep one")
                ambiguous.add(stem)
            else:
                unique[stem] = paths[0]
        by_stem.append(unique)
    images, masks = by_stem
    for stem in sorted(images.keys() - masks.keys() - ambiguous):
        problems.append(
            f"{display_name(images[stem], base)}: no mask with stem {stem!r} in {display_name(masks_dir, base)}/"
        )
    for stem in sorted(masks.keys() - images.keys() - ambiguous):
        problems.append(
            f"{display_name(masks[stem], base)}: no image with stem {stem!r} in {display_name(images_dir, base)}/"
        )
    pairs = [Pair(stem, images[stem], masks[stem]) for stem in sorted((images.keys() & masks.keys()) - ambiguous)]
    return Pairing(pairs, problems)


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


def _decode_cv2(path: Path) -> np.ndarray | None:
    """Decode with OpenCV keeping depth and channels, as RGB(A) order; None if it cannot."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)  # imdecode, not imread: non-ASCII paths
    with _quiet_opencv():
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
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


def read_raw(path: str | Path, *, name: str | None = None, keep_indices: bool = False) -> np.ndarray:
    """Decode ``path`` fully into an array: H×W or H×W×C (RGB order), dtype as stored.

    The full decode (not just the header) is what catches truncated files. ``keep_indices`` keeps
    palette indices (for masks) instead of expanding to colours. Raises :class:`MSRFError` naming
    the file (``name`` if given) when the file is missing, empty, or not a readable image.
    """
    path = Path(path)
    label = name or str(path)
    if not path.is_file():
        raise MSRFError(f"{label}: file not found")
    if path.stat().st_size == 0:
        raise MSRFError(f"{label}: empty file (0 bytes)")
    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    try:
        with Image.open(path) as im:
            # The raw mode is only visible before load(): Pillow reads 16-bit colour as 8-bit.
            raw_modes = " ".join(str(t.args) for t in im.tile)
            im.load()
            if im.mode in ("RGB", "RGBA") and ";16" in raw_modes:
                arr = _decode_cv2(path)
                if arr is None:
                    raise OSError("16-bit colour image OpenCV cannot decode")
                return arr
            return _pil_to_array(im, keep_indices=keep_indices)
    except UnidentifiedImageError:
        reason = "not a readable image file (wrong extension, damaged header, or a format Pillow cannot read)"
    except Image.DecompressionBombError as err:
        # a header claiming more than 2 × PIL.Image.MAX_IMAGE_PIXELS: refused before any decoding
        # (and never handed to OpenCV, which would try to allocate it)
        raise MSRFError(f"{label}: image too large to decode safely ({err})") from None
    except MSRFError:
        raise
    except Exception as err:  # decoders raise OSError, ValueError, SyntaxError, EOFError, ...
        reason = f"corrupt or truncated image ({err})"
    if is_tiff:
        arr = _decode_cv2(path)
        if arr is not None:
            return arr
    raise MSRFError(f"{label}: {reason}")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map any-depth pixels to uint8: uint8 unchanged, anything else min–max stretched to 0–255."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_image(path: str | Path, *, name: str | None = None) -> np.ndarray:
    """Read an image as H×W×3 uint8 RGB (alpha dropped, grey repeated, high depth stretched)."""
    arr = read_raw(path, name=name)
    if arr.ndim == 3:
        arr = arr[:, :, :3]
    arr = to_uint8(arr)
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
    if not middle.any() and not (top <= nominal_range(grey) / 2 and nonzero > LABEL_MAP_MIN_FRACTION):
        return None
    order = np.argsort(-fractions)[:5]
    shown = ", ".join(f"{values[i]:g} ({100 * fractions[i]:.1f}%)" for i in sorted(order, key=lambda i: values[i]))
    more = f" and {len(values) - len(order)} more" if len(values) > len(order) else ""
    return f"looks like a label map, not a binary mask (values {shown}{more})"


def binarise_mask(grey: np.ndarray, *, mask_threshold: float | None = None, name: str = "mask") -> np.ndarray:
    """Foreground (bool H×W) of a one-channel mask by the module's rules; raises on label maps."""
    if mask_threshold is not None:
        return grey > mask_threshold
    reason = label_map_reason(grey)
    if reason is not None:
        raise MSRFError(
            f"{name}: {reason}; binary masks must be 0/255 or 0/1 — set mask_threshold "
            "(--mask-threshold T) to take value > T as foreground"
        )
    return grey > nominal_range(grey) / 2


def read_mask(path: str | Path, *, mask_threshold: float | None = None, name: str | None = None) -> np.ndarray:
    """Read a mask file as a boolean H×W foreground array (see the module docstring for the rules)."""
    label = name or str(path)
    grey = mask_channel(read_raw(path, name=label, keep_indices=True))
    return binarise_mask(grey, mask_threshold=mask_threshold, name=label)


def foreground_to_grey(foreground: np.ndarray) -> np.ndarray:
    """A boolean mask as the 0/255 uint8 grey image the original resizes."""
    return np.where(foreground, np.uint8(255), np.uint8(0))
