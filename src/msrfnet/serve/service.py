"""What ``msrf serve`` does with an upload, without any web framework (so it is testable alone).

* :func:`decode_upload`: bytes → H×W×3 uint8 RGB with the rules of files on disk
  (:mod:`msrfnet.data.io`: any depth stretched, grey repeated, alpha dropped, NaN refused), the
  pixel count checked from the header *before* decoding (:class:`TooLarge` → HTTP 413). Nothing
  is written to disk.
* :class:`InferenceService`: the one shared :class:`Segmenter`; the model runs under a lock, so
  concurrent requests queue for it and never run it twice at once (on a CPU two parallel runs
  would only fight over the same cores). Decoding, objects and PNG encoding run outside the lock.
* :func:`model_card`: what ``GET /model`` answers (weights, training data, metrics).
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msrfnet.data.io import _decode_cv2, _pil_to_array
from msrfnet.errors import MSRFError
from msrfnet.inference.instances import (
    MIN_SIZE,
    SEED_DISTANCE,
    object_table,
    split_instances,
)
from msrfnet.inference.segmenter import (
    Segmenter,
    as_rgb,
)  # the one import of the inference API in msrfnet.serve
from msrfnet.options import probability
from msrfnet.overlay import display_rgb, encode_png
from msrfnet.weights.checkpoint import read_checkpoint
from msrfnet.weights.resolve import SHIPPED_WEIGHTS, resolve_weights

__all__ = [
    "BadRequest",
    "TooLarge",
    "Options",
    "InferenceService",
    "decode_upload",
    "model_card",
    "parse_options",
    "Segmenter",
]

DEFAULT_MAX_BYTES = 32 * 1024 * 1024  #: largest upload body accepted (32 MiB)
DEFAULT_MAX_PIXELS = 25_000_000  #: largest image accepted (e.g. 5,000 × 5,000)


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
                f"{name}: {width}×{height} pixels, over this server's limit of "
                f"{max_pixels:,} pixels (msrf serve --max-pixels)"
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


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass
class Options:
    """The query parameters of ``POST /predict``."""

    format: str = "png"  #: png (the mask, or the label image with instances) or json
    instances: bool = False  #: split the mask into objects (msrfnet.inference.instances)
    images: bool = False  #: json: add base64 PNGs (display image, mask, probability, outlines)
    threshold: float | None = None  #: None = the checkpoint's
    min_size: int | None = None
    seed_distance: int | None = None


def parse_options(query: dict[str, str]) -> Options:
    """:class:`Options` from a query string; an unknown or bad parameter: :class:`BadRequest`."""
    known = {f for f in Options.__dataclass_fields__}
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
    opts = Options()
    for key, text in query.items():
        value = text.strip().lower()
        if key == "format":
            if value not in ("png", "json"):
                raise BadRequest(f"format={text}: choose png or json")
            opts.format = value
        elif key in ("instances", "images"):
            if value not in _TRUE + _FALSE:
                raise BadRequest(f"{key}={text}: expected true or false")
            setattr(opts, key, value in _TRUE)
        elif key == "threshold":
            try:
                opts.threshold = probability(value)  # the rule of msrf predict --threshold
            except ArgumentTypeError as e:
                raise BadRequest(f"threshold={text}: {e}") from None
        else:
            if not value.isdigit() or int(value) > 10_000:
                raise BadRequest(f"{key}={text}: expected a whole number 0..10000")
            setattr(opts, key, int(value))
    return opts


def png_bytes(array: np.ndarray) -> bytes:

    return encode_png(array)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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

    def segment(self, rgb: np.ndarray, threshold: float | None):
        """The model's :class:`Segmentation` of one RGB image, queued behind any other request."""
        with self._model_lock:
            t0 = time.perf_counter()
            result = self.segmenter(rgb, threshold=threshold)
            self.stats.model_seconds += time.perf_counter() - t0
        return result

    def predict(self, data: bytes, name: str, opts: Options) -> tuple[str, bytes | dict[str, Any]]:
        """("png", bytes) or ("json", dict) for one uploaded file."""

        t0 = time.perf_counter()
        rgb = decode_upload(data, name, self.max_pixels, self.segmenter.normalize)
        out = self.segment(rgb, opts.threshold)
        t_model = time.perf_counter() - t0
        threshold = self.segmenter.threshold if opts.threshold is None else opts.threshold
        labels = None
        if opts.instances:
            min_size = MIN_SIZE if opts.min_size is None else opts.min_size
            seed_distance = SEED_DISTANCE if opts.seed_distance is None else opts.seed_distance
            try:
                labels = split_instances(
                    out.probability,
                    threshold,
                    min_size=min_size,
                    seed_distance=max(1, seed_distance),
                )
            except MSRFError as err:
                raise BadRequest(str(err)) from None
        if opts.format == "png":
            picture = labels if labels is not None else out.mask.astype(np.uint8) * 255
            return "png", png_bytes(picture)
        prob, mask = out.probability, out.mask
        counts, edges = np.histogram(prob, bins=10, range=(0.0, 1.0))
        answer: dict[str, Any] = {
            "file": name,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "threshold": threshold,
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
            "model": self.segmenter.description,
        }
        if labels is not None:
            answer["objects"] = {
                "count": int(labels.max()),
                "min_size": min_size,
                "seed_distance": seed_distance,
                "table": object_table(labels, intensity=rgb),
            }
        if opts.images:
            answer["images"] = self.pictures(rgb, prob, mask, labels)
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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    shipped = path.resolve() == SHIPPED_WEIGHTS.resolve()
    card_file = SHIPPED_WEIGHTS.parent / "MODEL_CARD.md"
    training = {
        k: getattr(cfg, k)
        for k in (
            "data",
            "name",
            "epochs",
            "max_minutes",
            "batch_size",
            "lr",
            "schedule",
            "augment",
            "precision",
            "seed",
        )
    }
    return {
        "weights": {
            "file": path.name,
            "bytes": path.stat().st_size,
            "sha256": digest.hexdigest(),
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
