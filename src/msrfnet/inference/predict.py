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

Planned, then run: :func:`plan_predict` decides everything from the files and options alone (no
model): the inputs, each one's output names and how it is predicted, which outputs an earlier run
left and are kept, the refusals (outputs among the inputs, over files msrf did not write, a size
this machine cannot hold). :func:`run_plan` runs a :class:`~msrfnet.inference.segmenter.Segmenter`
over the plan; :func:`predict` does both, as ``msrf predict`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from msrfnet.errors import MSRFError
from msrfnet.inference.predict_files import (
    OBJECTS_SUMMARY,
    RESIZED,
    STACK,
    STREAMED,
    TILED,
    gather_named,
    output_names,
    output_stems,
    output_suffixes,
    read_input,
    stream_tiff,
    unreadable_link,
    write_objects_summary,
    write_outputs,
)
from msrfnet.inference.runners import checkpoint_tiling, model_file
from msrfnet.inference.segmenter import Segmenter, UnreadableInput
from msrfnet.inference.stacks import predict_stack, tiff_planes
from msrfnet.inference.tiff_rows import open_tiff_rows
from msrfnet.option_groups import ModelSource, Objects, Outputs, Tiling
from msrfnet.options import check_inference_memory
from msrfnet.safe_output import OutputFolder, file_digest, refuse_collisions

__all__ = [
    "Job",
    "PredictPlan",
    "SkippedInputs",
    "plan_predict",
    "open_segmenter",
    "run_plan",
    "predict",
]

log = logging.getLogger("msrfnet")
T = TypeVar("T")


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One input of ``msrf predict`` and what becomes of it."""

    source: Path  #: the input file
    stem: str  #: its output stem (``plate1/A01`` under --recursive; ``a-2`` when ``a`` is taken)
    names: tuple[str, ...]  #: its output names, one per suffix of the plan, the mask first
    kind: str  #: STACK, STREAMED, TILED or RESIZED (:mod:`msrfnet.inference.predict_files`)
    done: bool = False  #: kept: an earlier run wrote all its outputs, with the same settings
    problem: str | None = None  #: known unreadable before reading (a link that leads nowhere)


@dataclass(frozen=True)
class PredictPlan:
    """What ``msrf predict`` will do, from the files and options alone: the jobs, the output
    suffixes, whether images are tiled, the settings recorded (as a digest) with each output,
    the checked output folder and the option groups."""

    jobs: tuple[Job, ...]
    suffixes: tuple[str, ...]
    tiled: bool
    settings: dict[str, Any]
    target: OutputFolder
    model: ModelSource
    tiling: Tiling
    objects: Objects | None
    outputs: Outputs

    @property
    def todo(self) -> list[Job]:
        return [job for job in self.jobs if not job.done]

    @property
    def strict(self) -> bool:
        """Stop at the first unreadable input: ``--strict``, or a single image to predict
        (which then gets its own one-line error)."""
        return self.outputs.strict or len(self.todo) == 1


def plan_predict(
    inputs: Sequence[str | Path],
    *,
    model: ModelSource | None = None,
    tiling: Tiling | None = None,
    objects: Objects | None = None,
    outputs: Outputs | None = None,
) -> PredictPlan:
    """The plan of predicting ``inputs`` (files, or folders: see the module docstring) with
    ``model`` tiled as ``tiling`` asks, split into ``objects`` (None: masks only), written as
    ``outputs`` say. Reads the inputs' names and headers, the model file's bytes (its digest)
    and the output folder's manifest; loads no model.

    Raises:
        MSRFError: a missing input, an output among the inputs or over a file msrf did not
            write (or an earlier output without --overwrite / --skip-existing, or one written
            with other settings), a model input size this machine cannot hold.
    """
    model, tiling, outputs = model or ModelSource(), tiling or Tiling(), outputs or Outputs()
    named = gather_named(inputs, outputs.recursive)
    files = [f for f, _ in named]
    suffixes = output_suffixes(outputs.probabilities, outputs.overlay, objects is not None)
    tiled = will_tile(model, tiling)
    kinds = [input_kind(f, tiled, objects is not None) for f in files]
    stems = output_stems(files, suffixes, [stem for _, stem in named])
    names = [output_names(stem, suffixes, kind) for stem, kind in zip(stems, kinds)]
    summary = [OBJECTS_SUMMARY] if objects is not None else []
    refuse_collisions(
        outputs.out,
        input_files=files,
        input_folders=[Path(i).expanduser() for i in inputs if Path(i).expanduser().is_dir()],
        outputs=[name for group in names for name in group] + summary,
    )
    # resuming replaces the outputs of a half-done image: msrf's own, like --overwrite; it keeps
    # only outputs written with the same model file and output-changing options
    settings = output_settings(model, tiling, objects)
    target = OutputFolder(
        outputs.out,
        "msrf predict",
        overwrite=outputs.overwrite or outputs.skip_existing,
        resumable=True,
        settings=settings,
    )
    done = target.plan(names, skip_existing=outputs.skip_existing)
    target.plan([summary], skip_existing=outputs.skip_existing)
    jobs = tuple(
        Job(f, stem, group, kind, kept, unreadable_link(f))
        for f, stem, group, kind, kept in zip(files, stems, names, kinds, done)
    )
    plan = PredictPlan(jobs, suffixes, tiled, settings, target, model, tiling, objects, outputs)
    check_plan_memory(plan)
    return plan


def will_tile(model: ModelSource, tiling: Tiling) -> bool:
    """Whether images are predicted tiled: asked (``tile`` / ``scale``), or weights trained at
    native scale, told by their stored config alone so that the outputs can be planned before
    the model loads (:meth:`Segmenter.open` then tiles them at their patch size and scale)."""
    if tiling.asked:
        return True
    exported = model.onnx is not None or model.pt2 is not None
    return not exported and checkpoint_tiling(model.weights) is not None


def input_kind(path: Path, tiled: bool, objects: bool) -> str:
    """How one input is predicted: a multi-plane TIFF as a STACK; tiled, a single-image TIFF
    that can be read band by band is STREAMED (unless objects are asked: they need the whole
    image), other images TILED in memory; else RESIZED (the paper's protocol)."""
    if unreadable_link(path) is not None:
        return TILED if tiled else RESIZED
    if tiff_planes(path) > 1:
        return STACK
    if not tiled:
        return RESIZED
    source = None if objects else open_tiff_rows(path)
    if source is None:
        return TILED
    source.close()
    return STREAMED


def output_settings(model: ModelSource, tiling: Tiling, objects: Objects | None) -> dict:
    """What the outputs' content depends on: the model file's SHA-256 and every option that
    changes an output (recorded as a digest with each; ``--skip-existing`` keeps only equal)."""
    path = model_file(model.weights, model.onnx, model.pt2)
    return {
        "model": file_digest(path) if path is not None else None,
        "threshold": model.threshold,
        "tta": model.tta,
        "image_size": model.image_size,
        "instances": objects.as_dict() if objects is not None else None,
        **tiling.as_dict(),
    }


def check_plan_memory(plan: PredictPlan) -> None:
    """Refuse, before the model loads, a ``--tile`` or ``--image-size`` this machine cannot
    hold: one window at a time when tiling, else up to ``batch_size`` images at once (the
    checkpoint's own size is checked when it loads, by the :class:`Segmenter`)."""
    size = plan.tiling.tile or plan.model.image_size
    if size is None:
        return
    batch = 1 if plan.tiled else min(plan.model.batch_size, max(1, len(plan.todo)))
    what = "--tile" if plan.tiling.tile else "--image-size"
    device = plan.model.device if plan.model.onnx is None and plan.model.pt2 is None else None
    check_inference_memory(size, batch, what, device)


# --- the run ------------------------------------------------------------------------------------


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


@dataclass
class _Tally:
    """What a run has written and skipped so far."""

    strict: bool
    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def attempt(self, job: Job, action: Callable[[], T]) -> T | None:
        """``action()`` for ``job``; an unreadable input (:class:`UnreadableInput`, or the
        problem the plan found) is named and skipped (None), or raised when ``strict``: the
        one place of that rule."""
        try:
            if job.problem is not None:
                raise UnreadableInput(job.problem)
            return action()
        except UnreadableInput as e:
            if self.strict:
                raise
            self.failures.append(str(e))
            log.warning("skipped %s", e)
            return None


def open_segmenter(plan: PredictPlan) -> Segmenter:
    """The :class:`Segmenter` of the plan's model and tiling (on its device)."""
    return Segmenter.open(model=plan.model, tiling=plan.tiling)


def run_plan(plan: PredictPlan, seg: Segmenter) -> list[Path]:
    """Predict the plan's jobs not done yet with ``seg`` and write their outputs; returns the
    mask paths written. Which weights, the numerics and what was written are logged (INFO); a
    progress bar shows while the ``msrfnet`` logger shows INFO (the CLI).

    Raises:
        SkippedInputs: after the others are written, when unreadable inputs were skipped.
        MSRFError: an unreadable input with ``strict`` (or the only one), an I/O error.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if seg.tiled != plan.tiled:
        raise ValueError(f"a plan {'with' if plan.tiled else 'without'} tiling, {seg!r}")
    todo, tally = plan.todo, _Tally(plan.strict)
    quiet = not log.isEnabledFor(logging.INFO) or len(todo) <= 1
    bar = tqdm(total=len(todo), disable=True if quiet else None, unit="image", desc="msrf predict")
    with logging_redirect_tqdm([log]), bar:
        for chunk in _chunks(todo, plan.model.batch_size):
            _run_chunk(plan, seg, chunk, tally)
            bar.update(len(chunk))
    if plan.objects is not None and (tally.written or not tally.failures):
        outputs = [(job.stem, job.names) for job in plan.jobs]
        write_objects_summary(plan.target, outputs, tally.written, plan.outputs.skip_existing)
    if tally.written or not tally.failures:
        log.info(_summary(plan, seg, tally.written))
    if tally.failures:
        raise SkippedInputs(tally.failures, len(todo), tally.written, plan.outputs.out)
    return tally.written


def _chunks(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """The jobs in the order they run: stacks one by one, images tiled or read band by band one
    by one, then resized images ``batch_size`` at a time (one model call each)."""
    resized = [job for job in jobs if job.kind == RESIZED]
    return (
        [[job] for job in jobs if job.kind == STACK]
        + [[job] for job in jobs if job.kind in (TILED, STREAMED)]
        + [resized[i : i + batch_size] for i in range(0, len(resized), batch_size)]
    )


def _run_chunk(plan: PredictPlan, seg: Segmenter, chunk: list[Job], tally: _Tally) -> None:
    """Predict one chunk of :func:`_chunks` and write its outputs; add to ``tally``."""
    job, batch = chunk[0], plan.model.batch_size
    objects = plan.objects.as_dict() if plan.objects is not None else None
    if job.kind == STACK:
        done = [tally.attempt(job, lambda: _stack(plan, seg, job, objects))]
    elif job.kind == STREAMED:
        seg.check_memory(batch)
        options = dict(canny=seg.canny, batch_size=batch, **seg.tiling)
        args = (job.source, job.names, plan.suffixes, plan.target, seg.window_predictor())
        run = lambda: stream_tiff(*args, plan.model.threshold, options, seg.normalize)  # noqa: E731
        done = [tally.attempt(job, run)]
    else:  # in memory: tiled one at a time, resized batch_size at a time
        read = [
            (j, tally.attempt(j, lambda j=j: read_input(j.source, seg.normalize))) for j in chunk
        ]
        read = [(j, rgb) for j, rgb in read if rgb is not None]
        probs = seg.probabilities([rgb for _, rgb in read], batch_size=batch) if read else []
        done = [
            write_outputs(
                plan.target, j.names, plan.suffixes, rgb, p, plan.model.threshold, objects
            )
            for (j, rgb), p in zip(read, probs)
        ]
    tally.written += [path for path in done if path is not None]


def _stack(plan: PredictPlan, seg: Segmenter, job: Job, objects: dict | None) -> Path:
    """One stack, plane by plane (:func:`~msrfnet.inference.stacks.predict_stack`)."""
    batch = plan.model.batch_size
    return predict_stack(
        job.source,
        dict(zip(plan.suffixes, job.names)),
        plan.target,
        lambda rgbs: seg.probabilities(rgbs, batch_size=batch),
        threshold=plan.model.threshold,
        normalize=seg.normalize,
        batch_size=batch,
        objects=objects,
    )


def _summary(plan: PredictPlan, seg: Segmenter, written: list[Path]) -> str:
    """The closing line: what was written where, how, and how many were kept."""
    o = plan.outputs
    asked = (
        ("probabilities", o.probabilities),
        ("overlays", o.overlay),
        ("objects", plan.objects is not None),
    )
    extras = "".join(f" + {name}" for name, on in asked if on)
    tta = ", TTA" if plan.model.tta else ""
    how = f" ({seg.image_size}² model input{tta})"
    if seg.tiling is not None:
        t = seg.tiling
        scaled = f", scale {t['scale']:g}" if t["scale"] else ""
        how = f" (tiles of {t['tile']}², overlap {t['overlap']:g}{scaled}{tta})"
    kept = f"; kept {len(plan.jobs) - len(plan.todo)} earlier" if o.skip_existing else ""
    return f"wrote {len(written)} mask(s){extras} to {o.out}/{how}{kept}"


# --- both ---------------------------------------------------------------------------------------


def predict(
    inputs: Sequence[str | Path],
    *,
    model: ModelSource | None = None,
    tiling: Tiling | None = None,
    objects: Objects | None = None,
    outputs: Outputs | None = None,
) -> list[Path]:
    """Predict masks for ``inputs`` as ``msrf predict`` does (see the module docstring):
    :func:`plan_predict`, then :func:`run_plan` with the plan's :class:`Segmenter`; returns the
    mask paths written. The option groups (:mod:`msrfnet.option_groups`) default as the CLI:

    - ``model``: which weights (or ONNX / int8 .pt2 file), on which ``device``, the threshold,
      TTA, the model input size, ``batch_size`` images (tiled: windows) per model call;
    - ``tiling``: ``tile`` / ``scale`` (or weights trained at native scale) predict tiled
      (:mod:`msrfnet.inference.tiling`); a single-image TIFF is then read and written band by
      band (TIFF mask and probabilities, an overlay downscaled to at most 2048 px), except with
      ``objects``; a multi-page TIFF or OME-TIFF stack is predicted plane by plane into stacks
      of the same shape (:mod:`msrfnet.inference.stacks`);
    - ``objects`` (None: masks only): each mask split into objects
      (:mod:`msrfnet.inference.instances`): ``<stem>_labels.tif``, ``<stem>_objects.csv`` and
      ``objects_summary.csv`` (stem, count);
    - ``outputs``: the folder ``out`` (checked before the model loads, :mod:`msrfnet.safe_output`:
      never among the inputs, never over a file msrf did not write), ``overwrite`` earlier msrf
      outputs or keep them (``skip_existing``: resume; only outputs written with the same model
      file and output options are kept), ``recursive`` folders (the outputs mirror the tree:
      ``in/plate1/A01.png`` → ``out/plate1/A01.png``), ``strict``.

    Raises:
        SkippedInputs: after the others are written, when unreadable inputs were skipped.
        MSRFError: a missing input, an unreadable one with ``strict``, bad options, an output that
            may not be written, an I/O error, unusable weights/ONNX file.
    """
    plan = plan_predict(inputs, model=model, tiling=tiling, objects=objects, outputs=outputs)
    return run_plan(plan, open_segmenter(plan))
