"""Multi-page TIFF and OME-TIFF stacks in ``msrf predict``: predicted plane by plane, written as
stacks of the same shape.

A TIFF whose first series holds more than one plane (z-slices, time points, channels, or plain
pages: every axis but Y, X and the colour samples S) is a *stack*. Each plane is one image to the
model: read alone (page by page where the file stores one plane per page, so memory holds one
plane), turned into RGB uint8 by the rules of single images (:func:`~msrfnet.inference.
segmenter.as_rgb`, with the checkpoint's ``normalize``; each plane stretched on its own, as a
single image would be), predicted, and appended to the outputs. Outputs mirror the stack: the
mask (0/255), the probabilities (uint16, p·65535), the overlay (RGB) and the labels are
multi-page TIFFs with the input's plane shape and axes (``tifffile`` shaped TIFF; any TIFF reader
sees one page per plane), named ``<stem>.tif``, ``<stem>_prob.tif``, ``<stem>_overlay.tif`` and
``<stem>_labels.tif`` (an ``x.ome.tif`` input gives ``x.tif``, since the output is not OME).
Objects are labelled per plane (1..N in each); ``<stem>_objects.csv`` has a leading ``plane``
column (0-based, in file order), and the summary counts all planes' objects.

Outputs are written page by page to temporary files in the output folder and handed to its safe
writer at the end (:mod:`msrfnet.safe_output`), so an interrupted stack leaves no output.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from msrfnet.errors import MSRFError, first_line
from msrfnet.inference.instances import find_objects, objects_csv
from msrfnet.inference.segmenter import UnreadableInput, as_rgb
from msrfnet.overlay import draw_overlay
from msrfnet.safe_output import io_error

__all__ = [
    "TIFF_EXTENSIONS",
    "Stack",
    "tiff_planes",
    "predict_stack",
]

TIFF_EXTENSIONS = (".tif", ".tiff")


_NOT_PLANES = "YXS"


def tiff_planes(path: Path) -> int:
    """The planes of a TIFF's first series (1 for other files, or a TIFF that cannot be read:
    reading it as an image names the problem)."""
    if Path(path).suffix.lower() not in TIFF_EXTENSIONS:
        return 1
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return math.prod(n for n, a in zip(series.shape, series.axes) if a not in _NOT_PLANES)
    except Exception:  # noqa: BLE001 - tifffile raises many types; the reader reports it
        return 1


class Stack:
    """An open TIFF stack: ``len(stack)`` planes, ``stack[i]`` the raw plane (H×W or H×W×S)."""

    def __init__(self, path: Path):
        import tifffile

        self.path = Path(path)
        try:
            self.tif = tifffile.TiffFile(self.path)
            series = self.tif.series[0]
        except Exception as e:  # noqa: BLE001
            raise UnreadableInput(f"{path}: not a readable TIFF stack ({first_line(e)})") from e
        self.series = series
        self.lead = [(a, n) for a, n in zip(series.axes, series.shape) if a not in _NOT_PLANES]
        self.planes = math.prod(n for _, n in self.lead)
        self._whole: np.ndarray | None = None

    def __len__(self) -> int:
        return self.planes

    @property
    def plane_axes(self) -> str:
        """The axes of the plane index (e.g. ``ZC``); ``Q`` (tifffile's unknown) for pages."""
        return "".join(a for a, _ in self.lead)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return tuple(n for _, n in self.lead)

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            if len(self.series.pages) == self.planes:  # one plane per page: read just that page
                return self.series.pages[i].asarray()
            if self._whole is None:
                whole = self.series.asarray()
                inner = [n for a, n in zip(self.series.axes, self.series.shape) if a in "YXS"]
                self._whole = whole.reshape(self.planes, *inner)
            return self._whole[i]
        except Exception as e:  # noqa: BLE001 - tifffile and its codecs raise many types
            raise UnreadableInput(f"{self.path}: plane {i} unreadable ({first_line(e)})") from e

    def close(self) -> None:
        self.tif.close()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _PageWriter:
    """A multi-page TIFF built page by page in a temporary file of the output folder."""

    def __init__(self, folder: Path, name: str, shape: tuple[int, ...], axes: str):
        import tifffile

        fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{Path(name).name}.", suffix=".tmp")
        os.close(fd)
        self.name, self.shape, self.axes = name, shape, axes
        self.writer = tifffile.TiffWriter(self.tmp, bigtiff=True)

    def write(self, page: np.ndarray) -> None:
        colour = page.ndim == 3
        axes = self.axes + ("YXS" if colour else "YX")
        self.writer.write(
            page,
            contiguous=True,
            photometric="rgb" if colour else "minisblack",
            metadata={"axes": axes, "shape": (*self.shape, *page.shape)},
        )

    def close(self) -> None:
        self.writer.close()


def predict_stack(
    path: Path,
    names: dict[str, str],
    target,
    probabilities: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    *,
    threshold: float,
    normalize: str,
    batch_size: int,
    objects: dict[str, int] | None,
) -> Path:
    """Predict every plane of the stack at ``path`` and write ``names`` (suffix → output name:
    the mask ``""``, ``"_prob"``, ``"_overlay"``, ``"_labels"``, ``"_objects"``) through
    ``target``; ``probabilities(rgbs)`` gives each plane's H×W probability map. Returns the
    mask's path.

    Raises :class:`UnreadableInput` naming the file (and plane) when a plane cannot be read,
    :class:`MSRFError` for an output that cannot be written."""

    writers: dict[str, _PageWriter] = {}
    rows: list[str] = []
    try:
        with Stack(path) as stack:
            try:
                target.root.mkdir(parents=True, exist_ok=True)
                for suffix, name in names.items():
                    if suffix != "_objects":
                        writers[suffix] = _PageWriter(
                            target.root, name, stack.plane_shape, stack.plane_axes
                        )
            except OSError as e:
                raise io_error(target.root, e) from e
            for start in range(0, len(stack), batch_size):
                index = range(start, min(len(stack), start + batch_size))
                try:
                    rgbs = [as_rgb(stack[i], f"{path} plane {i}", normalize) for i in index]
                except UnreadableInput:
                    raise
                except MSRFError as e:  # a plane of an unusable shape or with NaN pixels
                    raise UnreadableInput(str(e)) from None
                for i, rgb, prob in zip(index, rgbs, probabilities(rgbs)):
                    mask = prob >= threshold
                    pages = {
                        "": lambda: np.where(mask, np.uint8(255), np.uint8(0)),
                        "_prob": lambda: np.rint(np.clip(prob, 0, 1) * 65535).astype(np.uint16),
                        "_overlay": lambda: draw_overlay(rgb, mask),
                    }
                    if objects is not None:
                        labels, table = find_objects(prob, threshold, rgb, **objects)
                        pages["_labels"] = lambda: labels
                        text = objects_csv(table, {"plane": i})
                        rows.extend(text.splitlines()[0 if not rows else 1 :])
                    for suffix, writer in writers.items():
                        writer.write(pages[suffix]())
        for writer in writers.values():
            writer.close()
        for suffix, writer in writers.items():
            target.write_file(writer.name, lambda dest, tmp=writer.tmp: os.replace(tmp, dest))
        if "_objects" in names:
            target.write_text(names["_objects"], "\n".join(rows) + "\n")
        return target.root / names[""]
    except OSError as e:
        raise io_error(target.root, e) from e
    finally:
        for writer in writers.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already closed, or the disk is gone
                pass
            Path(writer.tmp).unlink(missing_ok=True)
