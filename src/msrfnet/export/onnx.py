"""``msrf export``: MSRF-Net as ONNX with dynamic batch, height and width.

Default (``single_input=True`` from the CLI): one input ``image``, uint8 N×3×H×W RGB at the model
size, and one output ``probability`` (N×1×H×W float32); the Canny map (equal to OpenCV's, bounded
hysteresis: ``model/pipeline.py``) and the [0, 1] scaling run in the graph, so a consumer feeds
resized pixels only. The two-input graph below stays behind ``msrf export --two-inputs`` (and is
what ``--int8`` quantizes).

The two-input graph: inputs ``image`` (batch×3×height×width float, RGB in [0, 1]) and ``canny``
(batch×1×height×width float {0, 1}); outputs the logits ``final`` (the mask), ``edge``,
``aux2`` (height/2×width/2) and ``aux4`` (height/4×width/4). Height and width must be multiples
of 8. The pre-processing is not in the graph; it is stored in the model's ``metadata_props``
with everything a consumer needs (``image_size``, ``canny_low``, ``canny_high``, ``threshold``,
``variant``, ``msrfnet_version``, ``preprocessing``), and ``msrf predict --onnx`` reads them back.

Exporter: the TorchScript one (``dynamo=False``) first — a traced graph of this model keeps every
shape symbolic, including the Keras-style bilinear upsampling (replicate pad, ``align_corners``
interpolation to ``h·f + 1`` and a slice back to ``h·f``) and the cropped transposed convolutions
(``[..., :-1, :-1]``), and it takes seconds. If it fails (it is deprecated and may go), the
``torch.export`` one (``dynamo=True``, opset ≥ 18, height/width declared as 8·k) is the fallback.

Every export is verified before it is kept: onnxruntime against PyTorch on random inputs at the
export size (batch 1) and at 40×56 (batch 2); the largest difference of the four outputs'
probabilities must be ≤ 1e-4.

The file is written to a temporary name and renamed, recorded in its folder's manifest; it must
be named ``.onnx``, may not go into the weights' folder, onto a folder, or over a file msrf did not
write, and replaces an earlier export only with ``overwrite``: checked before anything is exported
(:func:`msrfnet.export.destination.check_destination`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msrfnet.accel.cpu import flush_denormals
from msrfnet.data import read_image, resize_image, sample_root
from msrfnet.errors import MSRFError, first_line
from msrfnet.export.destination import check_destination
from msrfnet.model.loading import load_model
from msrfnet.model.pipeline import EXPORT_HYSTERESIS_ITERATIONS, ImageToProbability
from msrfnet.model.upsampling import freeze_upsampling
from msrfnet.options import check_image_size
from msrfnet.version import __version__
from msrfnet.weights.resolve import resolve_weights

__all__ = [
    "INPUTS",
    "OUTPUTS",
    "DIMS",
    "SINGLE_MASK_AGREEMENT",
    "TOLERANCE",
    "CHECK_SHAPE",
    "MIN_OPSET",
    "verify",
    "verify_single_input",
    "export_metadata",
    "export_onnx",
]

log = logging.getLogger("msrfnet")

INPUTS = ("image", "canny")
OUTPUTS = ("final", "edge", "aux2", "aux4")
#: symbolic dimension names of each input/output (axes 0, 2, 3)
DIMS = {
    "image": ("batch", "height", "width"),
    "canny": ("batch", "height", "width"),
    "final": ("batch", "height", "width"),
    "edge": ("batch", "height", "width"),
    "aux2": ("batch", "height/2", "width/2"),
    "aux4": ("batch", "height/4", "width/4"),
    "probability": ("batch", "height", "width"),
}
#: the one-input model's verification: probabilities this close, or (where the bounded Canny
#: hysteresis of the graph leaves an edge pixel out) masks this equal, on real sample images
SINGLE_MASK_AGREEMENT = 0.999
TOLERANCE = 1e-4
# batch, height, width of the second verification: not square, not the export size, and odd
# (5×7) at the deepest level, where same-padding and cropped transposed convolutions could go wrong
CHECK_SHAPE = (2, 40, 56)
MIN_OPSET = 17


def _example(batch: int, height: int, width: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=g)
    canny = (torch.rand(batch, 1, height, width, generator=g) < 0.15).float()
    return image, canny


def _export_torchscript(model, args, path: str, opset: int) -> None:
    import torch

    dynamic_axes = {
        name: dict(zip((0, 2, 3), dims)) for name, dims in DIMS.items() if name in INPUTS + OUTPUTS
    }
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice, and its note that slices with a step are not
        # constant-folded (they are not meant to be: their bounds depend on the input size)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*[Cc]onstant folding.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _export_dynamo(model, args, path: str, opset: int) -> None:
    import torch
    from torch.export import Dim

    # height and width are declared as 8·k: the three stride-2 stages need it, and torch.export
    # would otherwise specialise the size on the guards the model's shapes imply
    batch = Dim("batch", min=1, max=4096)
    h8, w8 = Dim("h8", min=1, max=2048), Dim("w8", min=1, max=2048)
    spec = {0: batch, 2: 8 * h8, 3: 8 * w8}
    with warnings.catch_warnings():
        # notes that the 8·k axes keep torch.export's own names: _finish renames them anyway
        warnings.filterwarnings("ignore", message=".*axis name.*")
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            model,
            args,
            None,
            dynamo=True,
            opset_version=max(opset, 18),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes={"image": spec, "canny": spec},
            verbose=False,
        )
        program.save(path)


def _finish(path: str, metadata: dict[str, str]) -> None:
    """Name the symbolic dimensions, add the metadata, check the model, write it back."""
    import onnx

    model = onnx.load(path)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for axis, name in zip((0, 2, 3), DIMS.get(value.name, ())):
            if axis < len(dims) and not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = name
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _probabilities(arrays) -> list[np.ndarray]:
    return [1.0 / (1.0 + np.exp(-np.clip(np.asarray(a, np.float64), -60, 60))) for a in arrays]


def verify(model, path: str | Path, image_size: int, name: str | Path | None = None) -> float:
    """Largest |p_onnx − p_torch| over the four outputs at two shapes; raises (naming ``name``,
    default ``path``) if above tolerance."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = name or path
    worst = 0.0
    for batch, height, width in ((1, image_size, image_size), CHECK_SHAPE):
        image, canny = _example(batch, height, width, seed=height * 1000 + width)
        with flush_denormals(), torch.inference_mode():
            ref = _probabilities(t.numpy() for t in model(image, canny))
        got = _probabilities(
            session.run(list(OUTPUTS), {"image": image.numpy(), "canny": canny.numpy()})
        )
        for output, a, b in zip(OUTPUTS, ref, got):
            if a.shape != b.shape:
                raise MSRFError(
                    f"{name}: ONNX output {output} has shape {b.shape} at input "
                    f"{batch}x3x{height}x{width}, PyTorch {a.shape}"
                )
            diff = float(np.max(np.abs(a - b)))
            worst = max(worst, diff)
            if not diff <= TOLERANCE:
                raise MSRFError(
                    f"{name}: ONNX output {output} differs from PyTorch by {diff:.2e} > "
                    f"{TOLERANCE:g} (probabilities, input {batch}x3x{height}x{width}); "
                    "the export is not kept"
                )
    return worst


def _export_single_input(net, cfg, path: str, image_size: int, opset: int) -> None:
    """``ImageToProbability`` (Canny and scaling in the graph) through the TorchScript exporter:
    one input ``image`` (uint8 N×3×H×W RGB), one output ``probability`` (float32 N×1×H×W)."""
    import torch

    module = ImageToProbability(net, cfg.canny_low, cfg.canny_high, EXPORT_HYSTERESIS_ITERATIONS)
    example = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    axes = {n: dict(zip((0, 2, 3), DIMS[n])) for n in ("image", "probability")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            module.eval(),
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["probability"],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def verify_single_input(net, cfg, path: str | Path, image_size: int, name=None) -> float:
    """onnxruntime against the eager one-input model (hysteresis until it converges) on the
    bundled sample's test images; raises unless the probabilities agree within the tolerance or
    the masks agree on ``SINGLE_MASK_AGREEMENT`` of the pixels. Returns the largest difference."""
    import onnxruntime as ort
    import torch

    files = sorted((sample_root() / "test" / "images").glob("*.png"))[:2]
    images = np.stack([resize_image(read_image(f), image_size) for f in files]).transpose(
        0, 3, 1, 2
    )
    images = np.ascontiguousarray(images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probability"], {"image": images})[0]
    with flush_denormals(), torch.inference_mode():
        ref = ImageToProbability(net, cfg.canny_low, cfg.canny_high)(
            torch.from_numpy(images)
        ).numpy()
    diff = float(np.max(np.abs(got - ref)))
    agree = float(np.mean((got >= 0.5) == (ref >= 0.5)))
    if diff > TOLERANCE and agree < SINGLE_MASK_AGREEMENT:
        raise MSRFError(
            f"{name or path}: the one-input ONNX model differs from PyTorch (probability "
            f"{diff:.2e}, masks {agree:.4%} equal); the export is not kept"
        )
    return diff


def export_metadata(
    cfg, image_size: int, source_weights: str, single_input: bool
) -> dict[str, str]:
    """The ``metadata_props`` of an export of weights whose config is ``cfg`` (see the module
    docstring): what a consumer needs to prepare its inputs and read the outputs."""
    import torch

    metadata = {
        "image_size": image_size,
        "canny_low": cfg.canny_low,
        "canny_high": cfg.canny_high,
        "threshold": cfg.threshold,
        "normalize": cfg.normalize,  # 16-bit/float images to uint8 (msrfnet.data.io.to_uint8)
        "variant": cfg.variant,
        "num_classes": cfg.num_classes,
        "msrfnet_version": __version__,
        "torch_version": torch.__version__,
        "source_weights": source_weights,
        "preprocessing": (
            "RGB uint8 -> Pillow Lanczos resize to image_size x image_size -> image = RGB/255 "
            "(NCHW float32); canny = (cv2.Canny(resized RGB uint8, canny_low, canny_high) > 0) as "
            "float32 {0,1}, Bx1xHxW; mask = sigmoid(final) >= threshold"
        ),
    }
    if single_input:
        metadata["inputs"] = "image: uint8 N x 3 x H x W RGB (H, W multiples of 8) at image_size"
        metadata["preprocessing"] = (
            "RGB uint8 -> Pillow Lanczos resize to image_size x image_size -> image (uint8 NCHW); "
            "the Canny map and the [0, 1] scaling are computed in the graph; "
            "mask = probability >= threshold"
        )
    return {k: str(v) for k, v in metadata.items()}


@dataclass(frozen=True)
class _Job:
    """One export, planned: the model to trace (``graph``: built with the asked up-convolutions),
    the one it is verified against (``reference``), and what goes into the file."""

    graph: object
    reference: object
    cfg: object
    image_size: int
    opset: int
    metadata: dict[str, str]
    name: Path  # what the messages call the file (the user's ``out``, not the temporary name)


def _write_single_input(job: _Job, tmp: str) -> tuple[str, float]:
    """The one-input graph into ``tmp``, finished and verified; (exporter used, largest diff)."""
    with flush_denormals():
        _export_single_input(job.graph, job.cfg, tmp, job.image_size, job.opset)
    _finish(tmp, {**job.metadata, "exporter": "torchscript", "opset": str(job.opset)})
    worst = verify_single_input(job.reference, job.cfg, tmp, job.image_size, name=job.name)
    return f"torchscript exporter, opset {job.opset}, one input", worst


def _write_two_inputs(job: _Job, tmp: str) -> tuple[str, float]:
    """The two-input graph into ``tmp`` with the TorchScript exporter, else the dynamo one;
    finished and verified; (exporter used, largest diff)."""
    args = _example(1, job.image_size, job.image_size)
    errors = []
    for name, fn, opset in (
        ("torchscript", _export_torchscript, job.opset),
        ("dynamo", _export_dynamo, max(job.opset, 18)),
    ):
        try:
            with flush_denormals():  # only speeds up the tracing forward on a CPU
                fn(job.graph, args, tmp, opset)
        except OSError:  # the disk, not the exporter: one line from safe_output
            raise
        except Exception as e:  # any exporter failure: try the other one
            first = first_line(e)
            errors.append(f"{name}: {type(e).__name__}: {first}")
            log.warning(
                "ONNX export with the %s exporter failed (%s)%s",
                name,
                first,
                "; trying torch.export (dynamo=True)" if name == "torchscript" else "",
            )
            continue
        _finish(tmp, {**job.metadata, "exporter": name, "opset": str(opset)})
        return f"{name} exporter, opset {opset}", verify(
            job.reference, tmp, job.image_size, name=job.name
        )
    raise MSRFError("ONNX export failed: " + " | ".join(errors))


def export_onnx(
    weights: str | Path | None = None,
    out: str | Path = "msrfnet.onnx",
    opset: int = 17,
    image_size: int | None = None,
    upsampling: str = "transposed",
    overwrite: bool = False,
    single_input: bool = False,
    *,
    result_name: str | None = None,
) -> Path:
    """Export the weights to ONNX at ``out`` (see the module docstring), verified; returns ``out``.
    Says which weights, what was written and how it verified in log lines (INFO); ``result_name``
    is what they call the file instead of ``wrote OUT`` (a temporary file, say).

    ``out`` is checked first (:func:`msrfnet.export.destination.check_destination`: an ``.onnx``
    name, not beside the weights, not over a file msrf did not write, writable), before the
    weights are loaded.

    ``image_size``: the model input size recorded in the file and used for tracing and
    verification (default: the checkpoint's, the size the weights were trained at; the graph
    itself takes any multiple of 8).

    ``single_input``: the one-input model instead
    (:class:`~msrfnet.model.pipeline.ImageToProbability`: ``image`` uint8 N×3×H×W RGB at the model
    size → ``probability`` N×1×H×W; the Canny map and the [0, 1] scaling are in the graph), verified
    by :func:`verify_single_input`.

    ``upsampling``: the form of the graph's up-convolutions (``MSRFNet(upsampling=...)``,
    :mod:`msrfnet.model.upsampling`; ``"subpixel-onnx"`` for ``--int8``); the exported model is
    built with it and the same weights, and verified against the model as loaded.

    Raises:
        MSRFError: unusable weights or options, an ``out`` that may not be written (see the module
            docstring), an I/O error, or an export that fails or does not verify.
    """
    if opset < MIN_OPSET:
        raise MSRFError(f"opset {opset}: must be at least {MIN_OPSET}")
    if image_size is not None:
        check_image_size(image_size)
    path = resolve_weights(weights, prefer_runs=False, announce=True)
    destination = check_destination(out, "onnx", inputs=[path.parent], overwrite=overwrite)
    model, cfg, _ = load_model(path, map_location="cpu")
    size = check_image_size(image_size or cfg.image_size)
    reference = graph = model.float().eval().requires_grad_(False)
    if upsampling != reference.upsampling:
        graph = reference.rebuild(upsampling=upsampling).requires_grad_(False)
        freeze_upsampling(graph)  # the sub-pixel weights as constants of the graph
    out = Path(out)
    metadata = export_metadata(cfg, size, path.name, single_input)
    job = _Job(graph, reference, cfg, size, opset, metadata, out)
    write = _write_single_input if single_input else _write_two_inputs
    result: list[tuple[str, float]] = []
    destination.write_file(lambda tmp: result.append(write(job, tmp)))
    used, worst = result[0]
    log.info(
        "%s (%.1f MiB; %s; dynamic batch/height/width, height and width multiples of 8; "
        "example size %d)",
        result_name or f"wrote {out}",
        out.stat().st_size / 2**20,
        used,
        size,
    )
    where = (
        "2 sample images, one input"
        if single_input
        else f"1x3x{size}x{size} and {CHECK_SHAPE[0]}x3x{CHECK_SHAPE[1]}x{CHECK_SHAPE[2]}"
    )
    log.info(
        "verified with onnxruntime at %s: max probability difference %.1e (tolerance %g)",
        where,
        worst,
        TOLERANCE,
    )
    return out
