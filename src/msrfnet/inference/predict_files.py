"""The files ``msrf predict`` reads and writes: which inputs (files and folders, their output
stems), the output names of each, their contents, and the band-by-band path of a large TIFF.

Suffixes: ``<stem>.png`` the 0/255 mask, ``_prob`` 16-bit probabilities, ``_overlay`` the image
with the mask, ``_labels`` uint16 objects (TIFF), ``_objects`` one CSV row per object;
``objects_summary.csv`` one row per image. A stack's outputs, and the mask and probabilities of
a TIFF read band by band, are TIFFs (``.tif``). An input that cannot be read raises
:class:`~msrfnet.inference.segmenter.UnreadableInput` (named, then skipped unless ``--strict``).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msrfnet.data import read_image
from msrfnet.data.files import IMAGE_EXTENSIONS, list_image_files
from msrfnet.errors import MSRFError, first_line
from msrfnet.inference.instances import find_objects, labels_tiff, objects_csv
from msrfnet.inference.runners import to_original_size
from msrfnet.inference.segmenter import UnreadableInput
from msrfnet.inference.tiff_rows import TiffRows, predict_tiff
from msrfnet.overlay import display_rgb, draw_overlay, encode_png
from msrfnet.safe_output import describe_os_error, io_error

__all__ = [
    "STACK",
    "STREAMED",
    "TILED",
    "RESIZED",
    "gather_inputs",
    "gather_named",
    "unreadable_link",
    "output_suffixes",
    "output_stems",
    "output_names",
    "read_input",
    "write_outputs",
    "stream_tiff",
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
    "write_objects_summary",
]

log = logging.getLogger("msrfnet")

MASK_SUFFIX, PROB_SUFFIX, OVERLAY_SUFFIX = "", "_prob", "_overlay"
LABELS_SUFFIX, OBJECTS_SUFFIX = "_labels", "_objects"  # with instances (msrf predict --instances)
EXTENSIONS = {LABELS_SUFFIX: ".tif", OBJECTS_SUFFIX: ".csv"}  # the others are .png
OBJECTS_SUMMARY = "objects_summary.csv"
#: How an input is predicted (a :class:`~msrfnet.inference.predict.Job`'s ``kind``): a stack
#: plane by plane (:mod:`msrfnet.inference.stacks`), a TIFF read and written band by band, an
#: image in memory tiled, or resized whole to the model's size (the paper's protocol).
STACK, STREAMED, TILED, RESIZED = "stack", "streamed", "tiled", "resized"


# --- inputs -------------------------------------------------------------------------------------


def gather_inputs(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders read non-recursively unless
    ``recursive``), in order."""
    return [f for f, _ in gather_named(inputs, recursive)]


def gather_named(inputs: Sequence[str | Path], recursive: bool = False) -> list[tuple[Path, str]]:
    """(file, output stem) for each image file of ``inputs``: the stem is the file's (an OME-TIFF
    ``x.ome.tif`` gives ``x``); with ``recursive``, a file found in a sub-folder of a folder
    given keeps its path under that folder (``plate1/A01``), so the outputs mirror the tree.
    A symbolic link named like an image that leads nowhere (it loops, or its target is gone) is
    an input too, so that reading it names the problem (:func:`unreadable_link`)."""

    if not inputs:
        raise MSRFError("no inputs: pass image files or folders")
    named: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        for f in _image_files(path, recursive):
            key = f.resolve() if unreadable_link(f) is None else f.absolute()
            if key not in seen:  # a file named twice (itself and its folder) is predicted once
                seen.add(key)
                under = f.parent.relative_to(path).as_posix() if path.is_dir() else "."
                stem = _stack_stem(f.stem)
                named.append((f, stem if under == "." else f"{under}/{stem}"))
    return named


def _image_files(path: Path, recursive: bool) -> list[Path]:
    """The image files of one input: itself, or those of a folder (with the links that lead
    nowhere), sorted as :func:`~msrfnet.data.files.list_image_files` sorts them."""
    expected = f"expected {', '.join(IMAGE_EXTENSIONS)}"
    if path.is_dir():
        found = list_image_files(path, recursive=recursive) + _dead_links(path, recursive)
        if not found:
            where = "or its sub-folders" if recursive else "(sub-folders: --recursive)"
            raise MSRFError(f"{path}: no image files in this folder {where}; {expected}")
        return sorted(found, key=lambda p: p.relative_to(path).as_posix())
    if not path.is_file() and not path.is_symlink():
        raise MSRFError(f"{path}: no such file or folder")
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise MSRFError(f"{path}: not a supported image type ({expected})")
    return [path]


def _dead_links(folder: Path, recursive: bool) -> list[Path]:
    """Visible symbolic links named like images under ``folder`` that lead to no file."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        for name in names:
            p = Path(parent) / name
            if not name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
                found += [p] if unreadable_link(p) is not None else []
    return found


def unreadable_link(path: Path) -> str | None:
    """Why ``path``, a symbolic link, leads to no file (one line naming it), else None."""
    if not path.is_symlink() or path.is_file():
        return None
    try:
        os.stat(path)
    except OSError as e:
        why = "a symbolic link that loops" if e.errno == errno.ELOOP else describe_os_error(e)
        return f"{path}: cannot read the file ({why})"
    return f"{path}: cannot read the file (a symbolic link to a folder)"


def _stack_stem(stem: str) -> str:
    """The output stem of ``x.ome.tif`` is ``x`` (the output is not OME)."""
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def output_suffixes(probabilities: bool, overlay: bool, objects: bool) -> tuple[str, ...]:
    """The outputs of each input, by suffix: the mask, then the probabilities, the overlay, and
    with objects the label image and the object table."""
    extra = [PROB_SUFFIX] * probabilities + [OVERLAY_SUFFIX] * overlay
    return (MASK_SUFFIX, *extra, *[LABELS_SUFFIX, OBJECTS_SUFFIX] * objects)


def output_stems(
    files: Sequence[Path],
    suffixes: Sequence[str] = (MASK_SUFFIX,),
    wanted: Sequence[str] | None = None,
) -> list[str]:
    """A distinct output stem per file: its own stem (or ``wanted[i]``, :func:`gather_named`'s),
    or ``stem-2``, ``stem-3``… when taken.

    A stem is taken when any of its output names (stem + each suffix) is already used, so an input
    called ``a_overlay.png`` cannot overwrite the overlay of ``a.png``.
    """
    used: set[str] = set()
    first: dict[str, Path] = {}
    stems = []
    for i, f in enumerate(files):
        base = f.stem if wanted is None else wanted[i]
        stem, k = base, 1
        while any(stem + s in used for s in suffixes):
            k += 1
            stem = f"{base}-{k}"
        if k > 1:
            log.warning(
                "%s: output name %r is taken (by %s); writing %s.png",
                f,
                base,
                first.get(base, "another input"),
                stem,
            )
        first.setdefault(base, f)
        used.update(stem + s for s in suffixes)
        stems.append(stem)
    return stems


def output_names(stem: str, suffixes: Sequence[str], kind: str) -> tuple[str, ...]:
    """The output file names of one input, per suffix: PNGs (and the label TIFF and object CSV);
    a stack's images are TIFF stacks, and a TIFF read band by band gets a TIFF mask and
    probabilities (its overlay stays a downscaled PNG)."""
    names = [output_name(stem, s) for s in suffixes]
    tiff = {STACK: set(suffixes), STREAMED: {MASK_SUFFIX, PROB_SUFFIX}}.get(kind, set())
    return tuple(
        n[: -len(".png")] + ".tif" if s in tiff and n.endswith(".png") else n
        for s, n in zip(suffixes, names)
    )


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


def write_objects_summary(target, outputs, written: Sequence[Path], kept: bool) -> None:
    """objects_summary.csv through ``target``: the object count of every image with outputs in
    the folder (``outputs``: (stem, output names) per input, the object table last), this
    run's (``written`` masks) and, when ``kept`` (``--skip-existing``), those an earlier run
    wrote (read from their object tables)."""
    done = set(written)
    counts = {
        stem: object_count(target, names[-1])
        for stem, names in outputs
        if target.root / names[0] in done or (kept and target.state(names[-1]) == "ours")
    }
    target.write_text(OBJECTS_SUMMARY, summary_csv(counts))


def summary_csv(counts: dict[str, int | None]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["stem", "count"])
    writer.writerows([stem, "" if n is None else n] for stem, n in counts.items())
    return buf.getvalue()


def read_input(path: Path, normalize: str = "minmax") -> np.ndarray:
    """An input image as RGB uint8 (:func:`msrfnet.data.read_image`); one that cannot be read
    raises :class:`~msrfnet.inference.segmenter.UnreadableInput` naming it."""
    problem = unreadable_link(Path(path))
    if problem is not None:
        raise UnreadableInput(problem)
    try:
        return read_image(path, normalize=normalize)
    except MSRFError as e:
        raise UnreadableInput(str(e)) from None


def write_outputs(target, names, suffixes, rgb, prob, threshold, objects=None) -> Path:
    """One image's outputs (:func:`encode_outputs`) written through ``target`` (an
    :class:`~msrfnet.safe_output.OutputFolder`) under ``names``; returns the mask's path."""
    for name, data in zip(names, encode_outputs(rgb, prob, threshold, suffixes, objects)):
        target.write_bytes(name, data)
    return target.root / names[0]


def stream_tiff(
    path, names, suffixes, target, predict, threshold, options, normalize="minmax"
) -> Path:
    """A TIFF read and written band by band (:func:`msrfnet.inference.tiff_rows.predict_tiff`,
    ``options`` its tiling, Canny and batch options): the outputs go to temporary files in the
    output folder, then each is handed to the output folder's safe writer (recorded, renamed
    into place). Returns the mask's path; an unreadable TIFF raises
    :class:`~msrfnet.inference.segmenter.UnreadableInput`, an I/O error on the outputs
    :class:`MSRFError`."""
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
            raise UnreadableInput(str(e)) from e
        except OSError as e:  # the outputs' space (they are allocated before being written)
            raise io_error(e.filename or target.root, e) from e
        except Exception as e:  # noqa: BLE001 - tifffile and its codecs raise many types
            raise UnreadableInput(f"{path}: corrupt or truncated TIFF ({first_line(e)})") from e
        for suffix, tmp in temps.items():
            target.write_file(by_suffix[suffix], lambda dest, tmp=tmp: os.replace(tmp, dest))
        if preview is not None:
            rgb, mask = preview.result()
            target.write_bytes(
                by_suffix[OVERLAY_SUFFIX], encode_png(draw_overlay(display_rgb(rgb), mask))
            )
        return target.root / names[0]
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
