"""The rules an option's value must follow: one function per rule, used in three places.

- ``argparse`` ``type=``: a bad value stops the parse with ``msrf train: error: argument --epochs:
  must be a positive integer, got '0'`` (exit 2), before anything runs;
- :meth:`msrfnet.config.Config.validate`: the same rules for the Python API and for a run's
  ``config.yaml`` (which may have been edited by hand);
- against the machine: :func:`available_ram` for the memory checks of ``msrf train``
  (:mod:`msrfnet.train.machine`) and of prediction (:func:`check_inference_memory`), before
  anything is allocated.

A rule takes the value (a string from the command line, or a parsed value from a config) and returns
it converted, or raises :class:`argparse.ArgumentTypeError` with a message that does not repeat
the option's name (argparse and ``Config.validate`` prefix it). Light imports only: ``msrf --help``
loads this module.
"""

from __future__ import annotations

import math
import os
from argparse import ArgumentTypeError
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from msrfnet.errors import MSRFError

__all__ = [
    "positive_int",
    "nonnegative_int",
    "seed",
    "finite_float",
    "positive_float",
    "scale",
    "overlap",
    "probability",
    "SIZE_MULTIPLE",
    "image_size",
    "check",
    "check_image_size",
    "check_input_size",
    "check_threshold",
    "choice",
    "devices",
    "run_name",
    "text",
    "name_suffix",
    "path_text",
    "mapping",
    "boolean",
    "optional",
    "available_ram",
    "GIB_PER_256_INFERENCE",
    "inference_memory_gib",
    "check_inference_memory",
]


def _number(value: Any, kind: type) -> int | float:
    """``value`` as an int or float; bools and, for ints, fractional numbers are refused."""
    if isinstance(value, bool):
        raise ArgumentTypeError(f"must be a number, got {value!r}")
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ArgumentTypeError(f"must be a whole number, got {value!r}")
        return int(value)
    if isinstance(value, (int, float)):
        return kind(value)
    try:
        return kind(str(value).strip())
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise ArgumentTypeError(f"must be {noun}, got {value!r}") from None


def positive_int(value: Any) -> int:
    """A count: 1, 2, …"""
    n = _number(value, int)
    if n < 1:
        raise ArgumentTypeError(f"must be a positive whole number, got {value!r}")
    return n


def nonnegative_int(value: Any) -> int:
    """0, 1, 2, … (worker processes, Canny thresholds)."""
    n = _number(value, int)
    if n < 0:
        raise ArgumentTypeError(f"must be 0 or more, got {value!r}")
    return n


def seed(value: Any) -> int:
    """A random seed: 0 … 2³²−1 (the range every library's generator accepts)."""
    n = _number(value, int)
    if not 0 <= n < 2**32:
        raise ArgumentTypeError(f"must be between 0 and {2**32 - 1}, got {value!r}")
    return n


def finite_float(value: Any) -> float:
    """A real number (not NaN or infinite)."""
    x = _number(value, float)
    if not math.isfinite(x):
        raise ArgumentTypeError(f"must be a finite number, got {value!r}")
    return x


def positive_float(value: Any) -> float:
    """A finite number above 0 (learning rate, minutes)."""
    x = finite_float(value)
    if x <= 0:
        raise ArgumentTypeError(f"must be a finite number above 0, got {value!r}")
    return x


def scale(value: Any) -> float:
    """A resampling factor: a finite number above 0 and at most 16 (0.5 halves the sides)."""
    x = positive_float(value)
    if x > 16:
        raise ArgumentTypeError(
            f"must be a resampling factor above 0 and at most 16, got {value!r}"
        )
    return x


def overlap(value: Any) -> float:
    """The share of a tile's side that neighbouring tiles share: a number in [0, 0.9]."""
    x = finite_float(value)
    if not 0.0 <= x <= 0.9:
        raise ArgumentTypeError(f"must lie in [0, 0.9] (0.25 is the usual choice), got {value!r}")
    return x


def probability(value: Any) -> float:
    """A finite number in [0, 1] (a probability threshold)."""
    x = finite_float(value)
    if not 0.0 <= x <= 1.0:
        raise ArgumentTypeError(f"must lie in [0, 1] (a probability), got {value!r}")
    return x


#: The encoder halves its input three times, so a model input's height and width are positive
#: multiples of 8: the one size rule, for options (:func:`image_size`) and tensors
#: (:func:`check_input_size`).
SIZE_MULTIPLE = 8


def _valid_sizes_near(size: int) -> str:
    """The valid sizes next to ``size``: ``"56 or 64"`` for 60, ``"8"`` below 8."""
    below = size // SIZE_MULTIPLE * SIZE_MULTIPLE
    return f"{below} or {below + SIZE_MULTIPLE}" if below >= SIZE_MULTIPLE else str(SIZE_MULTIPLE)


def _valid_size(size: int) -> bool:
    return size >= SIZE_MULTIPLE and size % SIZE_MULTIPLE == 0


def image_size(value: Any) -> int:
    """The model's input size: a positive multiple of 8 (the encoder halves it three times)."""
    size = _number(value, int)
    if not _valid_size(size):
        raise ArgumentTypeError(
            "must be a positive multiple of 8 (the encoder halves it 3 times); "
            f"try {_valid_sizes_near(size)}"
        )
    return size


def check(rule: Callable[[Any], Any], value: Any, what: str) -> Any:
    """``rule(value)`` for the Python API: a broken rule raises :class:`MSRFError` ``"what: why"``
    (the command line gets argparse's error from the same rule)."""
    try:
        return rule(value)
    except ArgumentTypeError as e:
        raise MSRFError(f"{what}: {e}") from None


def check_image_size(size: Any, what: str = "image_size") -> int:
    """:func:`image_size` raising :class:`MSRFError` that names ``what`` (for the Python API)."""
    return check(image_size, size, f"{what} {size}")


def check_input_size(height: int, width: int) -> None:
    """The size rule for a model input's height and width: :class:`MSRFError` naming the nearest
    valid sizes of each side that breaks it."""
    bad = [(n, s) for n, s in (("height", height), ("width", width)) if not _valid_size(s)]
    if bad:
        hints = ", ".join(f"{n} {s} → {_valid_sizes_near(s)}" for n, s in bad)
        raise MSRFError(
            "MSRF-Net needs input height and width that are multiples of 8 (three 2× poolings); "
            f"got {height}×{width}: {hints}"
        )


def check_threshold(threshold: Any) -> float:
    """:func:`probability` for a mask threshold given to the Python API (:class:`MSRFError`)."""
    return check(probability, threshold, f"threshold {threshold}")


def choice(values: Sequence[str]) -> Callable[[Any], str]:
    """A rule accepting exactly one of ``values`` (an enumerated option)."""

    def rule(value: Any) -> str:
        if not isinstance(value, str) or value not in values:
            raise ArgumentTypeError(f"must be one of {', '.join(values)}, got {value!r}")
        return value

    rule.__name__ = "one of " + ", ".join(values)  # argparse names the type in some messages
    return rule


def devices(value: Any) -> str:
    """``auto``, a count (``-1``: all), or a comma-separated list of device indices like ``0,1``."""
    text = str(value).strip()
    if text in ("auto", "-1") or (text.isdigit() and int(text) > 0):
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if "," in text and parts and all(p.isdigit() for p in parts):
        return ",".join(parts)
    raise ArgumentTypeError(
        f"must be auto, a positive count, -1 (all) or a list like 0,1; got {value!r}"
    )


def run_name(value: Any) -> str:
    """A run folder's name: one path component (no ``/``), not ``.`` or ``..``."""
    text = str(value)
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    if not text.strip() or text in (".", "..") or any(sep in text for sep in separators):
        raise ArgumentTypeError(f"must be a folder name (no {os.sep}, not . or ..), got {value!r}")
    return text


def text(value: Any) -> str:
    """A non-empty string (an open-ended option such as ``--strategy``)."""
    if not isinstance(value, str) or not value.strip():
        raise ArgumentTypeError(f"must be a non-empty text, got {value!r}")
    return value


def name_suffix(value: Any) -> str:
    """The end of a file stem (``--mask-suffix _segmentation``): any text without a path
    separator; empty for none."""
    if not isinstance(value, str) or "/" in value or "\\" in value:
        raise ArgumentTypeError(f"must be the end of a file name (no / or \\), got {value!r}")
    return value


def path_text(value: Any) -> str:
    """A file or folder path (a string or a :class:`~pathlib.Path`), as a string."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return text(value)


def mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ArgumentTypeError(f"must be a mapping, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"must be true or false, got {value!r}")
    return value


def optional(rule: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``rule``, or ``None`` (a config field left at its automatic default)."""
    return lambda value: None if value is None else rule(value)


# --- the machine -------------------------------------------------------------------------------
def available_ram() -> tuple[int, str]:
    """Bytes of memory this process can still get: MemAvailable, capped by a cgroup v2 limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            if int(limit) - used < avail:
                return max(0, int(limit) - used), "available under this container's memory limit"
    except (OSError, ValueError):
        pass
    return avail, "of RAM available"


#: Peak memory of one eval forward (no autograd) per image at 256², float32: 0.20 GiB. Measured
#: as the rise of the peak resident memory (``getrusage`` ``ru_maxrss``) of a fresh process over
#: one ``TorchRunner(MSRFNet(), "cpu", exact=True)`` call, after a warm-up call at 16²: +0.049 GiB
#: at 128² × 1, +0.103 at 128² × 2, +0.174 at 256² × 1, +0.675 at 256² × 4, +0.756 at 512² × 1,
#: i.e. 0.17–0.21 GiB per 256² image, growing with the pixels. The CPU bfloat16 fast path needs
#: about half (0.08–0.09); the check uses float32, what ``--exact``, a CPU without bf16 and
#: onnxruntime's float32 run.
GIB_PER_256_INFERENCE = 0.20


def inference_memory_gib(size: int, batch: int = 1) -> float:
    """Peak memory of predicting ``batch`` model inputs of ``size``² at once (one runner call):
    :data:`GIB_PER_256_INFERENCE` scaled by pixels and batch."""
    return GIB_PER_256_INFERENCE * (size / 256) ** 2 * batch


def check_inference_memory(
    size: int, batch: int = 1, what: str = "--image-size", device: Any = None
) -> float:
    """Refuse a model input of ``size``² (the window's side when tiling) in batches of ``batch``
    that needs more memory than this machine has, before anything is allocated: the RAM this
    process can get, or the memory of the GPU when ``device`` (a ``torch.device`` or its name;
    ``auto``: CUDA when there is one) is one. ``what`` names the option in the one-line
    :class:`MSRFError`. Returns the estimate (GiB)."""
    need = inference_memory_gib(size, batch)
    have, where = _gpu_memory(device) or available_ram()
    if need * 2**30 > have:
        images = f"{batch} inputs" if batch > 1 else "one input"
        raise MSRFError(
            f"{what} {size}: predicting {images} of {size}×{size} at once needs about "
            f"{need:.1f} GiB, more than the {have / 2**30:.1f} GiB {where}; lower {what}"
            f"{' or the batch size' if batch > 1 else ''}"
        )
    return need


def _gpu_memory(device: Any) -> tuple[int, str] | None:
    """(bytes, "of GPU memory") of the CUDA ``device``; None for other devices, or a CUDA device
    that is not there (loading the model names that problem)."""
    kind = getattr(device, "type", None) or str(device or "cpu").strip().lower().split(":")[0]
    if kind not in ("cuda", "auto"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        props = torch.cuda.get_device_properties(device if kind == "cuda" else 0)
    except (AssertionError, RuntimeError, ValueError):
        return None
    return props.total_memory, "of GPU memory"
