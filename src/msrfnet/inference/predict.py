"""``msrf predict``: masks for image files of any size, written at each image's original size.

For every image, exactly as in training (``msrfnet.data``, spec §2.2): read as RGB uint8 (grey
repeated, alpha dropped, 16-bit stretched), Pillow-Lanczos resize to S×S (the checkpoint's image
size unless ``image_size`` is given), image/255, and the Canny map of the resized RGB with the
checkpoint's thresholds as the second input. The final head's sigmoid probability is resized back
to the original H×W (OpenCV bilinear), thresholded (≥ ``threshold``) and written as a 0/255 PNG.

Inputs are files or folders; a folder contributes the image files directly inside it (not its
sub-folders; hidden files skipped), sorted by name. Supported: png, jpg, jpeg, tif, tiff, bmp.
An unreadable file is named in one line and skipped; the others are written, then a summary
lists the skipped files (:class:`SkippedInputs`, exit status 1); ``strict`` stops at the first.
Where outputs may go, and resuming an interrupted run: :mod:`msrfnet.safe_output`.

Outputs in ``out`` per image ``<stem>``: ``<stem>.png`` (the mask); with ``probabilities``
``<stem>_prob.png``, a 16-bit grey PNG of round(probability·65535) (divide by 65535 to read it
back); with ``overlay`` ``<stem>_overlay.png``, the image with the mask tinted and outlined. Two
inputs with one stem (``a.png``, ``a.jpg``) get ``a`` and ``a-2`` and a warning.

``tta`` averages the probabilities of the image as is, flipped left-right and flipped upside-down
(image and Canny map flipped together, each prediction flipped back).

On a CPU with native bfloat16 the PyTorch model runs in bfloat16 with exact sub-pixel up-convs
(≈ 2× faster; ``exact`` keeps float32); see :class:`~msrfnet.inference.runners.TorchRunner`.

``onnx`` runs an exported model (:mod:`msrfnet.export.onnx`) through onnxruntime alone, with the
image size and Canny thresholds stored in its metadata (``image_size`` overrides; 256 when absent);
``pt2`` an int8 package of ``msrf export --int8 --out X.pt2`` (:mod:`msrfnet.export.pt2_int8`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from msrfnet.data import read_image
from msrfnet.data.files import IMAGE_EXTENSIONS, list_image_files
from msrfnet.errors import MSRFError
from msrfnet.inference.predict_files import (
    EXTENSIONS,
    LABELS_SUFFIX,
    MASK_SUFFIX,
    OBJECTS_SUFFIX,
    OBJECTS_SUMMARY,
    OVERLAY_SUFFIX,
    PROB_SUFFIX,
    encode_outputs,
    object_count,
    output_name,
    predict_tiled_file,
    summary_csv,
)
from msrfnet.inference.runners import checkpoint_tiling, model_file
from msrfnet.inference.segmenter import Segmenter
from msrfnet.inference.stacks import UnreadableStack, predict_stack, stack_stem, tiff_planes
from msrfnet.inference.tiff_rows import open_tiff_rows
from msrfnet.inference.tiling import check_tiling
from msrfnet.options import check_image_size, check_threshold
from msrfnet.safe_output import OutputFolder, file_digest, refuse_inside_inputs

__all__ = [
    "EXTENSIONS",
    "OBJECTS_SUMMARY",
    "MASK_SUFFIX",
    "PROB_SUFFIX",
    "OVERLAY_SUFFIX",
    "LABELS_SUFFIX",
    "OBJECTS_SUFFIX",
    "gather_inputs",
    "gather_named",
    "output_stems",
    "output_name",
    "SkippedInputs",
    "run_predict",
]

log = logging.getLogger("msrfnet")


# --- inputs -------------------------------------------------------------------------------------


def gather_inputs(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders read non-recursively unless
    ``recursive``), in order."""
    return [f for f, _ in gather_named(inputs, recursive)]


def gather_named(inputs: Sequence[str | Path], recursive: bool = False) -> list[tuple[Path, str]]:
    """(file, output stem) for each image file of ``inputs``: the stem is the file's (an OME-TIFF
    ``x.ome.tif`` gives ``x``); with ``recursive``, a file found in a sub-folder of a folder
    given keeps its path under that folder (``plate1/A01``), so the outputs mirror the tree."""

    if not inputs:
        raise MSRFError("no inputs: pass image files or folders")
    named: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = list_image_files(path, recursive=recursive)
            if not found:
                where = "or its sub-folders" if recursive else "(sub-folders: --recursive)"
                raise MSRFError(
                    f"{path}: no image files in this folder {where}; "
                    f"expected {', '.join(IMAGE_EXTENSIONS)}"
                )
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise MSRFError(
                    f"{path}: not a supported image type (expected {', '.join(IMAGE_EXTENSIONS)})"
                )
            found = [path]
        else:
            raise MSRFError(f"{path}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:  # a file named twice (itself and its folder) is predicted once
                seen.add(key)
                under = f.parent.relative_to(path).as_posix() if path.is_dir() else "."
                stem = stack_stem(f.stem)
                named.append((f, stem if under == "." else f"{under}/{stem}"))
    return named


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


# --- the command --------------------------------------------------------------------------------


class SkippedInputs(MSRFError):
    """Unreadable inputs were skipped, the others written: one summary line; ``written`` holds
    the mask paths, ``failures`` the one-line reason of each skipped input."""

    def __init__(
        self, failures: list[str], total: int, written: list[Path], out: Path, shown: int = 10
    ):
        names = [f.split(": ", 1)[0] for f in failures]
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        super().__init__(
            f"{len(failures)} of {total} image(s) could not be read and were skipped "
            f"(each named above): {', '.join(names[:shown])}{more}; "
            f"{len(written)} mask(s) written to {out}/"
        )
        self.written, self.failures = written, failures


def run_predict(
    inputs: Sequence[str | Path],
    weights: str | Path | None = None,
    onnx: str | Path | None = None,
    out: str | Path = "predictions",
    overlay: bool = False,
    probabilities: bool = False,
    tta: bool = False,
    threshold: float = 0.5,
    batch_size: int = 8,
    image_size: int | None = None,
    exact: bool = False,
    pt2: str | Path | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    strict: bool = False,
    instances: bool = False,
    min_size: int | None = None,
    seed_distance: int | None = None,
    recursive: bool = False,
    tile: int | None = None,
    overlap: float = 0.25,
    scale: float | None = None,
    device: str | None = "auto",
) -> list[Path]:
    """Predict masks for ``inputs`` (see the module docstring); returns the mask paths written.
    The model runs through :class:`~msrfnet.inference.segmenter.Segmenter` (``device``: auto,
    cpu, cuda, cuda:N or mps). Which weights, the numerics and what was written are logged
    (INFO); a progress bar shows while the ``msrfnet`` logger shows INFO (the CLI).

    ``tile`` / ``scale`` (or weights trained at native scale) predict tiled
    (:mod:`msrfnet.inference.tiling`): each image resampled by ``scale``, in ``tile`` × ``tile``
    windows (default: the model's input size) overlapping by ``overlap``, blended, resampled
    back. A single-image TIFF is then read and written band by band: its mask (and
    probabilities) are TIFF files, ``<stem>.tif`` (``<stem>_prob.tif``), and its overlay a
    preview downscaled to at most 2048 px (with ``instances`` it is read whole instead).

    ``recursive`` reads folders with their sub-folders; the outputs mirror the tree
    (``in/plate1/A01.png`` → ``out/plate1/A01.png``). A multi-page TIFF or OME-TIFF stack is
    predicted plane by plane into stacks of the same shape (:mod:`msrfnet.inference.stacks`).

    ``instances`` splits each mask into objects (:mod:`msrfnet.inference.instances`; its
    ``min_size`` and ``seed_distance``, defaults there) and writes ``<stem>_labels.tif`` (uint16
    labels), ``<stem>_objects.csv`` (one row per object) and ``objects_summary.csv`` (stem, count).

    ``out`` is checked before the model loads (:mod:`msrfnet.safe_output`): never among the
    inputs, never over a file msrf did not write; ``overwrite`` replaces earlier msrf outputs,
    ``skip_existing`` keeps them and predicts only the images whose outputs are missing (an output
    written with another model file or other output-changing options is refused instead).

    Raises:
        SkippedInputs: after the others are written, when unreadable inputs were skipped.
        MSRFError: a missing input, an unreadable one with ``strict``, bad options, an output that
            may not be written, an I/O error, unusable weights/ONNX file.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    check_threshold(threshold)
    if batch_size < 1:
        raise MSRFError(f"batch size {batch_size}: must be at least 1")
    if image_size is not None:
        check_image_size(image_size)
    if overwrite and skip_existing:
        raise MSRFError("pass either --overwrite or --skip-existing, not both")
    objects = None
    if instances:
        from msrfnet.inference.instances import MIN_SIZE, SEED_DISTANCE, check_instance_options

        sizes = check_instance_options(
            MIN_SIZE if min_size is None else min_size,
            SEED_DISTANCE if seed_distance is None else seed_distance,
        )
        objects = dict(zip(("min_size", "seed_distance"), sizes))
    named = gather_named(inputs, recursive)
    files = [f for f, _ in named]
    planes = [tiff_planes(f) for f in files]  # > 1: a stack (msrfnet.inference.stacks)
    tiling_options = check_tiling(tile, overlap, scale)
    tiled = _will_tile(weights, onnx, pt2, tiling_options)
    streamed = [tiled and not instances and _streamable(f) for f in files]
    suffixes = [MASK_SUFFIX] + [PROB_SUFFIX] * probabilities + [OVERLAY_SUFFIX] * overlay
    suffixes += [LABELS_SUFFIX, OBJECTS_SUFFIX] * instances
    stems = output_stems(files, suffixes, [name for _, name in named])
    out = Path(out)
    folders = {Path(i).expanduser() for i in inputs if Path(i).expanduser().is_dir()}
    refuse_inside_inputs(out, sorted({f.parent for f in files} | folders))
    # resuming replaces the outputs of a half-done image: msrf's own, like --overwrite; it keeps
    # only outputs written with the same model file and output-changing options
    model = model_file(weights, onnx, pt2)
    settings = {
        "model": file_digest(model) if model is not None else None,
        "threshold": threshold,
        "tta": tta,
        "image_size": image_size,
        "instances": objects,
        **tiling_options,
    }
    target = OutputFolder(
        out,
        "msrf predict",
        overwrite=overwrite or skip_existing,
        resumable=True,
        settings=settings,
    )
    names = [[output_name(stem, s) for s in suffixes] for stem in stems]
    for group, big in zip(names, streamed):  # a TIFF read band by band: TIFF mask, probabilities
        if big:
            group[: 1 + probabilities] = [
                n[: -len(".png")] + ".tif" for n in group[: 1 + probabilities]
            ]
    for group, n in zip(names, planes):  # a stack: TIFF stacks (the CSV stays a CSV)
        if n > 1:
            group[:] = [x[: -len(".png")] + ".tif" if x.endswith(".png") else x for x in group]
    todo = [i for i, done in enumerate(target.plan(names, skip_existing=skip_existing)) if not done]
    n_todo = len(todo)
    if instances:
        target.plan([[OBJECTS_SUMMARY]], skip_existing=skip_existing)
    seg = Segmenter.open(
        weights,
        onnx=onnx,
        pt2=pt2,
        device=device,
        exact=exact,
        image_size=image_size,
        threshold=threshold,
        tta=tta,
        **tiling_options,
    )
    tiling = seg.tiling
    size = seg.image_size

    written: list[Path] = []
    failures: list[str] = []
    quiet = not log.isEnabledFor(logging.INFO) or len(todo) <= 1
    with (
        logging_redirect_tqdm([log]),
        tqdm(
            total=len(todo), disable=True if quiet else None, unit="image", desc="msrf predict"
        ) as bar,
    ):
        for i in [i for i in todo if planes[i] > 1]:  # stacks, plane by plane
            try:
                predict_stack(
                    files[i],
                    dict(zip(suffixes, names[i])),
                    target,
                    lambda rgbs: seg.probabilities(rgbs, batch_size=batch_size),
                    threshold=threshold,
                    normalize=seg.normalize,
                    batch_size=batch_size,
                    objects=objects,
                )
                written.append(out / names[i][0])
            except UnreadableStack as e:
                if strict or n_todo == 1:
                    raise
                failures.append(str(e))
                log.warning("skipped %s", e)
            bar.update(1)
        todo = [i for i in todo if planes[i] == 1]  # single images, below
        if tiling is not None:  # one image at a time, batch_size tiles per runner call
            for i in todo:
                predict_tiled_file(
                    files[i], names[i], suffixes, target, seg.window_predictor(), tiling,
                    canny=seg.canny, threshold=threshold, batch_size=batch_size,
                    objects=objects, streamed=streamed[i], strict=strict or len(todo) == 1,
                    normalize=seg.normalize, written=written, failures=failures,
                )  # fmt: skip
                bar.update(1)
        for start in range(0, 0 if tiling else len(todo), batch_size):  # the resize protocol
            batch, rgbs = [], []
            for i in todo[start : start + batch_size]:
                try:
                    rgbs.append(read_image(files[i], normalize=seg.normalize))
                    batch.append(i)
                except MSRFError as e:
                    if strict or len(todo) == 1:  # one image: its own one-line error
                        raise
                    failures.append(str(e))
                    log.warning("skipped %s", e)
            if batch:
                probs = seg.probabilities(rgbs)  # each at its image's size
                for i, rgb, prob in zip(batch, rgbs, probs):
                    outputs = encode_outputs(rgb, prob, threshold, suffixes, objects)
                    for name, data in zip(names[i], outputs):
                        target.write_bytes(name, data)
                    written.append(out / names[i][0])
            bar.update(len(todo[start : start + batch_size]))
    if instances and (written or not failures):
        done = set(written)  # every image with outputs in the folder: this run's and kept ones
        counts = {
            stem: object_count(target, group[-1])
            for stem, group in zip(stems, names)
            if out / group[0] in done or (skip_existing and target.state(group[-1]) == "ours")
        }
        target.write_text(OBJECTS_SUMMARY, summary_csv(counts))
    if written or not failures:
        asked = (("probabilities", probabilities), ("overlays", overlay), ("objects", instances))
        extras = "".join(f" + {name}" for name, on in asked if on)
        how = f" ({size}² model input{', TTA' if tta else ''})"
        if tiling is not None:
            scaled = f", scale {tiling['scale']:g}" if tiling["scale"] else ""
            how = (
                f" (tiles of {tiling['tile']}², overlap {tiling['overlap']:g}{scaled}"
                f"{', TTA' if tta else ''})"
            )
        kept = f"; kept {len(files) - n_todo} earlier" if skip_existing else ""
        log.info(f"wrote {len(written)} mask(s){extras} to {out}/{how}{kept}")
    if failures:
        raise SkippedInputs(failures, n_todo, written, out)
    return written


# --- tiled prediction (msrfnet.inference.tiling) -------------------------------------------------


def _will_tile(weights, onnx, pt2, options: dict) -> bool:
    """Whether ``msrf predict`` predicts tiled: asked (``tile`` / ``scale``), or weights trained
    at native scale, told by their stored config alone so that the outputs can be planned before
    the model loads (:meth:`Segmenter.open` then tiles them at their patch size and scale)."""
    if options["tile"] is not None or options["scale"] is not None:
        return True
    return onnx is None and pt2 is None and checkpoint_tiling(weights) is not None


def _streamable(path: Path) -> bool:

    source = open_tiff_rows(path)
    if source is None:
        return False
    source.close()
    return True
