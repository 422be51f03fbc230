"""The files ``msrf predict`` writes for one image: names, contents, and the band-by-band path
of a large TIFF. Suffixes: ``<stem>.png`` the 0/255 mask, ``_prob`` 16-bit probabilities,
``_overlay`` the image with the mask, ``_labels`` uint16 objects (TIFF), ``_objects`` one CSV
row per object; ``objects_summary.csv`` one row per image."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msrfnet.data import read_image
from msrfnet.errors import MSRFError, first_line
from msrfnet.inference.instances import find_objects, labels_tiff, objects_csv
from msrfnet.inference.runners import to_original_size
from msrfnet.inference.tiff_rows import TiffRows, predict_tiff
from msrfnet.inference.tiling import predict_tiled
from msrfnet.overlay import display_rgb, draw_overlay, encode_png
from msrfnet.safe_output import io_error

__all__ = [
    "MASK_SUFFIX",
    "PROB_SUFFIX",
    "OVERLAY_SUFFIX",
    "LABELS_SUFFIX",
    "OBJECTS_SUFFIX",
    "EXTENSIONS",
    "OBJECTS_SUMMARY",
    "output_name",
    "encode_outputs",
    "object_count",
    "summary_csv",
    "predict_tiled_file",
]

log = logging.getLogger("msrfnet")

MASK_SUFFIX, PROB_SUFFIX, OVERLAY_SUFFIX = "", "_prob", "_overlay"
LABELS_SUFFIX, OBJECTS_SUFFIX = "_labels", "_objects"  # with instances (msrf predict --instances)
EXTENSIONS = {LABELS_SUFFIX: ".tif", OBJECTS_SUFFIX: ".csv"}  # the others are .png
OBJECTS_SUMMARY = "objects_summary.csv"


def output_name(stem: str, suffix: str) -> str:
    """The file name of one output: ``<stem><suffix>`` + .png, .tif (labels) or .csv (objects)."""
    return f"{stem}{suffix}{EXTENSIONS.get(suffix, '.png')}"


def encode_outputs(
    rgb: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    suffixes: Sequence[str],
    objects: dict[str, int] | None = None,
) -> list[bytes]:
    """One image's output files, per suffix: the 0/255 mask at the original size, the 16-bit
    probabilities, the overlay, and with ``objects`` (the options of
    :func:`~msrfnet.inference.instances.find_objects`) the uint16 label TIFF and the object CSV."""

    full = to_original_size(prob, *rgb.shape[:2])
    mask = full >= threshold
    if objects is not None:
        labels, rows = find_objects(full, threshold, rgb, **objects)
    make = {
        MASK_SUFFIX: lambda: encode_png(np.where(mask, np.uint8(255), np.uint8(0))),
        PROB_SUFFIX: lambda: encode_png(
            np.rint(np.clip(full, 0.0, 1.0) * 65535.0).astype(np.uint16)
        ),
        OVERLAY_SUFFIX: lambda: encode_png(draw_overlay(display_rgb(rgb), mask)),
        LABELS_SUFFIX: lambda: labels_tiff(labels),
        OBJECTS_SUFFIX: lambda: objects_csv(rows).encode("utf-8"),
    }
    return [make[s]() for s in suffixes]


def object_count(target, name: str) -> int | None:
    """The objects listed in an earlier run's CSV (``--skip-existing``), None if unreadable."""
    try:
        return max(0, len((target.root / name).read_text(encoding="utf-8").splitlines()) - 1)
    except (OSError, UnicodeDecodeError):
        return None


def summary_csv(counts: dict[str, int | None]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["stem", "count"])
    writer.writerows([stem, "" if n is None else n] for stem, n in counts.items())
    return buf.getvalue()


def predict_tiled_file(
    path: Path,
    names: list[str],
    suffixes: Sequence[str],
    target,
    predict,
    tiling: dict,
    *,
    canny: tuple[float, float],
    threshold: float,
    batch_size: int,
    objects: dict | None,
    streamed: bool,
    strict: bool,
    written: list[Path],
    failures: list[str],
    normalize: str = "minmax",
) -> None:
    """One image's tiled prediction and outputs; an unreadable image is named and skipped
    (appended to ``failures``) unless ``strict``."""

    options = dict(canny=canny, batch_size=batch_size, **tiling)
    try:
        if streamed:
            _stream_tiff(path, names, suffixes, target, predict, threshold, options, normalize)
        else:
            try:
                rgb = read_image(path, normalize=normalize)
            except MSRFError as e:
                raise _Unreadable(str(e)) from e
            prob = predict_tiled(rgb, predict, **options)
            for name, data in zip(names, encode_outputs(rgb, prob, threshold, suffixes, objects)):
                target.write_bytes(name, data)
    except _Unreadable as e:
        if strict:
            raise MSRFError(str(e)) from None
        failures.append(str(e))
        log.warning("skipped %s", e)
        return
    written.append(target.root / names[0])


class _Unreadable(Exception):
    """An input that cannot be read (named, then skipped unless ``--strict``)."""


def _stream_tiff(
    path, names, suffixes, target, predict, threshold, options, normalize="minmax"
) -> None:
    """A TIFF read and written band by band (:func:`msrfnet.inference.tiff_rows.predict_tiff`):
    the outputs go to temporary files in the output folder, then each is handed to the
    output folder's safe writer (recorded, renamed into place)."""
    import os
    import tempfile

    by_suffix = dict(zip(suffixes, names))
    temps: dict[str, str] = {}
    try:
        target.root.mkdir(parents=True, exist_ok=True)
        for suffix in (MASK_SUFFIX, PROB_SUFFIX):
            if suffix in by_suffix:
                fd, temps[suffix] = tempfile.mkstemp(
                    dir=target.root, prefix=f".{by_suffix[suffix]}.", suffix=".tmp"
                )
                os.close(fd)
    except OSError as e:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        raise io_error(target.root, e) from e
    try:
        try:
            with TiffRows(path, normalize) as source:
                preview = predict_tiff(
                    source,
                    predict,
                    mask_path=temps[MASK_SUFFIX],
                    probability_path=temps.get(PROB_SUFFIX),
                    threshold=threshold,
                    preview=OVERLAY_SUFFIX in by_suffix,
                    **options,
                )
        except MSRFError as e:  # the input's pixels (NaN in a float image)
            raise _Unreadable(str(e)) from e
        except OSError as e:  # the outputs' space (they are allocated before being written)
            raise io_error(e.filename or target.root, e) from e
        except Exception as e:  # noqa: BLE001 - tifffile and its codecs raise many types
            raise _Unreadable(f"{path}: corrupt or truncated TIFF ({first_line(e)})") from e
        for suffix, tmp in temps.items():
            target.write_file(by_suffix[suffix], lambda dest, tmp=tmp: os.replace(tmp, dest))
        if preview is not None:
            rgb, mask = preview.result()
            target.write_bytes(
                by_suffix[OVERLAY_SUFFIX], encode_png(draw_overlay(display_rgb(rgb), mask))
            )
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
