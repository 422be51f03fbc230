"""What ``msrf serve`` does with an upload, without any web framework (so it is testable alone).

* :func:`decode_upload`: bytes → H×W×3 uint8 RGB with the rules of files on disk
  (:mod:`msrfnet.data.io`: any depth stretched, grey repeated, alpha dropped, NaN refused), the
  pixel count checked from the header *before* decoding (:class:`TooLarge` → HTTP 413). Nothing
  is written to disk.
* :func:`parse_options`: the query parameters, each checked by the rule of its command-line option
  (:mod:`msrfnet.options`, through the option groups :class:`~msrfnet.option_groups.Objects` and
  :class:`~msrfnet.option_groups.Tiling`, whose defaults apply when one is not given).
* :class:`InferenceService`: the one shared :class:`Segmenter`; the model runs under a lock, so
  concurrent requests queue for it and never run it twice at once (on a CPU two parallel runs
  would only fight over the same cores). Decoding, objects and PNG encoding run outside the lock.
* :func:`model_card`: what ``GET /model`` answers (weights, training data, metrics).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import threading
import time
from argparse import ArgumentTypeError
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msrfnet import options as opt
from msrfnet.data.io import _decode_cv2, _pil_to_array
from msrfnet.errors import MSRFError
from msrfnet.inference.instances import object_table, split_instances
from msrfnet.inference.segmenter import (
    Segmenter,
    as_rgb,
)  # the one import of the inference API in msrfnet.serve
from msrfnet.option_groups import MIN_SIZE, SEED_DISTANCE, Objects, Tiling
from msrfnet.overlay import display_rgb, encode_png
from msrfnet.safe_output import file_digest
from msrfnet.weights.checkpoint import read_checkpoint
from msrfnet.weights.resolve import SHIPPED_WEIGHTS, resolve_weights

__all__ = [
    "BadRequest",
    "TooLarge",
    "MAX_MB_FLAG",
    "MAX_MEGAPIXELS_FLAG",
    "QUERY",
    "Options",
    "InferenceService",
    "decode_upload",
    "model_card",
    "parse_options",
    "unknown_parameter",
    "Segmenter",
]

DEFAULT_MAX_BYTES = 32 * 1024 * 1024  #: largest upload body accepted (32 MiB)
DEFAULT_MAX_PIXELS = 25_000_000  #: largest image accepted (e.g. 5,000 × 5,000)
#: The options of ``msrf serve`` that set the limits, as the 413 answers name them (``msrf serve``
#: declares its flags with these names: tests/serve/test_serve.py checks they exist).
MAX_MB_FLAG = "--max-mb"
MAX_MEGAPIXELS_FLAG = "--max-megapixels"


class BadRequest(MSRFError):
    """A request the server cannot use (HTTP 400): one line naming the problem."""

    status = 400


class TooLarge(MSRFError):
    """An upload over the byte or pixel limit (HTTP 413)."""

    status = 413


def decode_upload(
    data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, normalize: str = "minmax"
) -> np.ndarray:
    """An uploaded file's bytes as H×W×3 uint8 RGB (16-bit/float pixels by ``normalize``, the
    model's rule: :func:`msrfnet.data.io.to_uint8`); :class:`BadRequest` / :class:`TooLarge`."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadRequest(f"{name}: empty file (0 bytes)")

    def check_pixels(width: int, height: int) -> None:
        if width * height > max_pixels:
            raise TooLarge(
                f"{name}: {width}×{height} pixels, over this server's limit of {max_pixels:,} "
                f"pixels (msrf serve {MAX_MEGAPIXELS_FLAG} {max_pixels / 1e6:g})"
            )

    arr = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(*im.size)
            raw_modes = " ".join(str(t.args) for t in im.tile)  # before load(), as data.io
            im.load()
            if im.mode in ("RGB", "RGBA") and ";16" in raw_modes:
                arr = _decode_cv2(data)  # Pillow would drop 16-bit colour to 8 bit
            else:
                arr = _pil_to_array(im, keep_indices=False)
        reason = "an image OpenCV cannot decode"
    except MSRFError:
        raise
    except UnidentifiedImageError:
        reason = "not an image file (or a format Pillow cannot read)"
    except Image.DecompressionBombError:
        raise TooLarge(f"{name}: image too large to decode safely") from None
    except Exception as err:  # truncated or corrupt data: OSError, ValueError, SyntaxError, ...
        reason = f"corrupt or truncated image ({str(err).splitlines()[0] if str(err) else err!r})"
    if arr is None and data[:4] in (b"II*\x00", b"MM\x00*"):  # TIFF compressions Pillow lacks
        arr = _decode_cv2(data)
        if arr is not None:
            check_pixels(arr.shape[1], arr.shape[0])
    if arr is None:
        raise BadRequest(f"{name}: {reason}")
    try:
        return as_rgb(arr, name=name, normalize=normalize)
    except MSRFError as err:
        raise BadRequest(str(err)) from None


#: The query parameters of ``POST /predict`` and what they do (the FastAPI application declares
#: them from here); :func:`parse_options` checks each by its rule, the command line's.
QUERY = {
    "format": "png (the mask, or with instances=true the uint16 label image; default) or json "
    "(size, foreground fraction, probability summary, objects)",
    "instances": "true: split the mask into objects (msrf predict --instances)",
    "images": "json: add the page's layers (image, mask, probability, outlines) as PNG data URLs",
    "threshold": "foreground = probability ≥ T (default: the model's; msrf predict --threshold)",
    "min_size": f"instances: drop objects under this many pixels (default {MIN_SIZE}; --min-size)",
    "seed_distance": "instances: objects whose centres are closer than this many pixels stay one "
    f"(default {SEED_DISTANCE}; --seed-distance)",
    "tile": "predict tiled with SIZE×SIZE windows, a multiple of 8 (default: as the model was "
    "trained; --tile)",
    "overlap": "tiled: share of a window's side that neighbours share (--overlap)",
    "scale": "tiled: resample the image by S before tiling (--scale)",
}
_TILING = tuple(f.name for f in dataclasses.fields(Tiling))
_OBJECTS = tuple(f.name for f in dataclasses.fields(Objects))
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _switch(value: str) -> bool:
    """A true/false query parameter: true, 1, yes, on or false, 0, no, off, empty."""
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ArgumentTypeError(f"must be true or false, got {value!r}")
    return text in _TRUE


#: The rules of the parameters that are not an option group's (those are Tiling's and Objects').
_RULES = {
    "format": opt.choice(("png", "json")),
    "instances": _switch,
    "images": _switch,
    "threshold": opt.probability,  # the rule of msrf predict --threshold
}


@dataclass(frozen=True)
class Options:
    """The query parameters of ``POST /predict``, checked: the answer's ``format``, whether to
    split ``objects`` (``instances``) and add the page's ``images``, the ``threshold`` (None:
    the model's), the :class:`~msrfnet.option_groups.Objects` settings, and the tiling options
    the request gave (checked by :class:`~msrfnet.option_groups.Tiling`; the rest are the
    model's own)."""

    format: str = "png"
    instances: bool = False
    images: bool = False
    threshold: float | None = None
    objects: Objects = field(default_factory=Objects)
    tiling: dict[str, Any] = field(default_factory=dict)


def unknown_parameter(name: str) -> BadRequest:
    """The refusal of a query parameter ``POST /predict`` does not have (rather than ignore it)."""
    return BadRequest(f"unknown parameter {name!r} (known: {', '.join(sorted(QUERY))})")


def parse_options(query: Mapping[str, str | None]) -> Options:
    """:class:`Options` from query values (None: not given), each checked by the rule of its
    command-line option (one line ``"name value: why"``, as the Python API says it); an unknown
    or bad parameter is a :class:`BadRequest`."""
    given = {k: v.strip() for k, v in query.items() if v is not None}
    unknown = sorted(set(given) - set(QUERY))
    if unknown:
        raise unknown_parameter(unknown[0])
    try:
        checked = {
            name: opt.check(rule, given[name], f"{name} {given[name]}")
            for name, rule in _RULES.items()
            if name in given
        }
        objects = Objects(**{k: given[k] for k in _OBJECTS if k in given})
        tiling = Tiling(**{k: given[k] for k in _TILING if k in given})
    except MSRFError as err:
        raise BadRequest(str(err)) from None
    asked = {k: getattr(tiling, k) for k in _TILING if k in given}
    return Options(**checked, objects=objects, tiling=asked)


def png_bytes(array: np.ndarray) -> bytes:

    return encode_png(array)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def summary(prob: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """The JSON answer's numbers: the foreground fraction and the probabilities' summary."""
    counts, edges = np.histogram(prob, bins=10, range=(0.0, 1.0))
    return {
        "foreground_fraction": round(float(mask.mean()), 6),
        "probability": {
            "mean": round(float(prob.mean()), 6),
            "min": round(float(prob.min()), 6),
            "max": round(float(prob.max()), 6),
            "mean_foreground": round(float(prob[mask].mean()), 6) if mask.any() else None,
            "histogram": {
                "edges": [round(float(e), 2) for e in edges],
                "counts": counts.tolist(),
            },
        },
    }


@dataclass
class Stats:
    """Counters for ``GET /health``."""

    started: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0
    model_seconds: float = 0.0


class InferenceService:
    """The shared model and what one request does with it."""

    def __init__(
        self,
        segmenter: Segmenter,
        *,
        card: dict[str, Any] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.segmenter = segmenter
        self.card = card or {"description": segmenter.description}
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.stats = Stats()
        self._model_lock = threading.Lock()  # the model runs for one request at a time
        self._stats_lock = threading.Lock()

    def count(self, *, error: bool) -> None:
        with self._stats_lock:
            self.stats.requests += 1
            self.stats.errors += int(error)

    def health(self) -> dict[str, Any]:
        s = self.stats
        return {
            "status": "ok",
            "model": self.segmenter.description,
            "image_size": self.segmenter.image_size,
            "requests": s.requests,
            "errors": s.errors,
            "model_seconds": round(s.model_seconds, 3),
            "uptime_seconds": round(time.time() - s.started, 1),
            "limits": {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels},
        }

    def segmenter_for(self, tiling: dict[str, Any]) -> Segmenter:
        """The shared segmenter, or (when the request set tiling options) a copy of it that tiles
        as asked, sharing its runner: the options not given keep the model's own tiling."""
        if not tiling:
            return self.segmenter
        seg = self.segmenter
        own = {"tile": seg.tile, "overlap": seg.overlap, "scale": seg.scale}
        asked = Tiling(**{**own, **tiling})
        view = copy.copy(seg)
        try:
            view.set_tiling(asked.tile, asked.overlap, asked.scale)
        except MSRFError as err:  # e.g. an int8 package that takes one input size
            raise BadRequest(str(err)) from None
        return view

    def segment(self, rgb: np.ndarray, threshold: float | None, segmenter: Segmenter | None = None):
        """The model's :class:`Segmentation` of one RGB image, queued behind any other request."""
        with self._model_lock:
            t0 = time.perf_counter()
            result = (segmenter or self.segmenter)(rgb, threshold=threshold)
            self.stats.model_seconds += time.perf_counter() - t0
        return result

    def predict(self, data: bytes, name: str, opts: Options) -> tuple[str, bytes | dict[str, Any]]:
        """("png", bytes) or ("json", dict) for one uploaded file."""

        t0 = time.perf_counter()
        segmenter = self.segmenter_for(opts.tiling)
        rgb = decode_upload(data, name, self.max_pixels, segmenter.normalize)
        out = self.segment(rgb, opts.threshold, segmenter)
        t_model = time.perf_counter() - t0
        threshold = segmenter.threshold if opts.threshold is None else opts.threshold
        labels = None
        if opts.instances:
            try:
                labels = split_instances(out.probability, threshold, **opts.objects.as_dict())
            except MSRFError as err:
                raise BadRequest(str(err)) from None
        if opts.format == "png":
            picture = labels if labels is not None else out.mask.astype(np.uint8) * 255
            return "png", png_bytes(picture)
        answer = {
            "file": name,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "threshold": threshold,
            **summary(out.probability, out.mask),
            "model": segmenter.description,
            "tiling": segmenter.tiling,
        }
        if labels is not None:
            table = object_table(labels, intensity=rgb)
            answer["objects"] = {
                "count": int(labels.max()),
                **opts.objects.as_dict(),
                "table": table,
            }
        if opts.images:
            answer["images"] = self.pictures(rgb, out.probability, out.mask, labels)
        answer["seconds"] = {
            "until_mask": round(t_model, 4),
            "total": round(time.perf_counter() - t0, 4),
        }
        return "json", answer

    @staticmethod
    def pictures(rgb, prob, mask, labels) -> dict[str, str]:
        """The page's layers as PNG data URLs: the auto-contrasted image (display only), the mask,
        the probability (8-bit grey, coloured by the page) and the object outlines."""

        layers = {
            "display": display_rgb(rgb),
            "mask": mask.astype(np.uint8) * 255,
            "probability": np.rint(prob * 255).astype(np.uint8),
        }
        if labels is not None:
            from skimage.segmentation import find_boundaries

            layers["outlines"] = find_boundaries(labels, mode="inner").astype(np.uint8) * 255
        return {k: data_url(png_bytes(v)) for k, v in layers.items()}


def model_card(weights: str | Path | None, segmenter: Segmenter) -> dict[str, Any]:
    """``GET /model``: the weights file (name, size, SHA-256), what it was trained on (the stored
    config), its stored metrics and versions, and the shipped weights' ``MODEL_CARD.md``."""

    path = resolve_weights(weights, prefer_runs=False)  # a run folder → its best.safetensors
    _, cfg, info = read_checkpoint(path)
    shipped = path.resolve() == SHIPPED_WEIGHTS.resolve()
    card_file = SHIPPED_WEIGHTS.parent / "MODEL_CARD.md"
    names = "data name epochs max_minutes batch_size lr schedule augment precision seed".split()
    training = {k: getattr(cfg, k) for k in names}
    return {
        "weights": {
            "file": path.name,
            "bytes": path.stat().st_size,
            "sha256": file_digest(path),
            "shipped": shipped,
        },
        "model": {
            "variant": cfg.variant,
            "classes": cfg.num_classes,
            "image_size": segmenter.image_size,
            "canny": list(segmenter.canny),
            "threshold": segmenter.threshold,
            "numerics": getattr(segmenter.runner, "numerics", segmenter.description),
        },
        "training": training,
        "metrics": info.get("metrics", {}),
        "versions": info.get("versions", {}),
        "card": card_file.read_text(encoding="utf-8") if shipped and card_file.is_file() else None,
    }
