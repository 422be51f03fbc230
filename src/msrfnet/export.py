"""``msrf export``: MSRF-Net as ONNX with dynamic batch, height and width.

The graph: inputs ``image`` (batch×3×height×width float, RGB in [0, 1]) and ``canny``
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
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import MSRFError, first_line

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
}
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

    dynamic_axes = {name: dict(zip((0, 2, 3), dims)) for name, dims in DIMS.items()}
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice, and its note that slices with a step are not
        # constant-folded (they are not meant to be: their bounds depend on the input size)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*[Cc]onstant folding.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, args, path, dynamo=False, opset_version=opset, input_names=list(INPUTS),
            output_names=list(OUTPUTS), dynamic_axes=dynamic_axes, do_constant_folding=True,
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
            model, args, None, dynamo=True, opset_version=max(opset, 18), input_names=list(INPUTS),
            output_names=list(OUTPUTS), dynamic_shapes={"image": spec, "canny": spec}, verbose=False,
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

    from .predict import flush_denormals

    options = ort.SessionOptions()
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = name or path
    worst = 0.0
    for batch, height, width in ((1, image_size, image_size), CHECK_SHAPE):
        image, canny = _example(batch, height, width, seed=height * 1000 + width)
        with flush_denormals(), torch.inference_mode():
            ref = _probabilities(t.numpy() for t in model(image, canny))
        got = _probabilities(session.run(list(OUTPUTS), {"image": image.numpy(), "canny": canny.numpy()}))
        for output, a, b in zip(OUTPUTS, ref, got):
            if a.shape != b.shape:
                raise MSRFError(f"{name}: ONNX output {output} has shape {b.shape} at input {batch}x3x{height}x{width}, PyTorch {a.shape}")
            diff = float(np.max(np.abs(a - b)))
            worst = max(worst, diff)
            if not diff <= TOLERANCE:
                raise MSRFError(f"{name}: ONNX output {output} differs from PyTorch by {diff:.2e} > {TOLERANCE:g} "
                                f"(probabilities, input {batch}x3x{height}x{width}); the export is not kept")
    return worst


def export_onnx(
    weights: str | Path | None = None,
    out: str | Path = "msrfnet.onnx",
    opset: int = 17,
    image_size: int = 256,
    echo: Callable[[str], object] | None = print,
    prepare: Callable[[object], object] | None = None,
) -> Path:
    """Export the weights to ONNX at ``out`` (see the module docstring), verified; returns ``out``.

    ``prepare`` rewrites a copy of the model in place before tracing (an export-only form such as
    :func:`msrfnet.quantize.use_export_subpixel`); the export is verified against the untouched model.

    Raises:
        MSRFError: unusable weights or options, or an export that fails or does not verify.
    """
    import torch

    from . import __version__
    from .checkpoint import atomic_write, load_model
    from .predict import check_image_size, flush_denormals
    from .weights_resolve import resolve_weights

    if opset < MIN_OPSET:
        raise MSRFError(f"opset {opset}: must be at least {MIN_OPSET}")
    check_image_size(image_size)
    path = resolve_weights(weights, prefer_runs=False, echo=echo)
    model, cfg, _ = load_model(path, map_location="cpu")
    model = reference = model.float().eval().requires_grad_(False)  # the plain graph, not training's
    if prepare is not None:
        model = copy.deepcopy(model)
        prepare(model)
    args = _example(1, image_size, image_size)
    out = Path(out)
    metadata = {
        "image_size": image_size,
        "canny_low": cfg.canny_low,
        "canny_high": cfg.canny_high,
        "threshold": cfg.threshold,
        "variant": cfg.variant,
        "num_classes": cfg.num_classes,
        "msrfnet_version": __version__,
        "torch_version": torch.__version__,
        "source_weights": path.name,
        "preprocessing": (
            "RGB uint8 -> Pillow Lanczos resize to image_size x image_size -> image = RGB/255 (NCHW float32); "
            "canny = (cv2.Canny(resized RGB uint8, canny_low, canny_high) > 0) as float32 {0,1}, Bx1xHxW; "
            "mask = sigmoid(final) >= threshold"
        ),
    }
    used: list[str] = []
    worst = [0.0]

    def write(tmp: str) -> None:
        errors = []
        for name, fn, opset_used in (("torchscript", _export_torchscript, opset), ("dynamo", _export_dynamo, max(opset, 18))):
            try:
                with flush_denormals():  # only speeds up the tracing forward on a CPU
                    fn(model, args, tmp, opset_used)
            except Exception as e:  # any exporter failure: try the other one
                first = first_line(e)
                errors.append(f"{name}: {type(e).__name__}: {first}")
                log.warning("ONNX export with the %s exporter failed (%s)%s", name, first,
                            "; trying torch.export (dynamo=True)" if name == "torchscript" else "")
                continue
            used.append(f"{name} exporter, opset {opset_used}")
            metadata["exporter"] = name
            metadata["opset"] = opset_used
            _finish(tmp, {k: str(v) for k, v in metadata.items()})
            worst[0] = verify(reference, tmp, image_size, name=out)
            return
        raise MSRFError("ONNX export failed: " + " | ".join(errors))

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MSRFError(f"{out.parent}: cannot create the output folder ({e.strerror or e})") from e
    atomic_write(out, write)
    if echo is not None:
        echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB; {used[0]}; dynamic batch/height/width, "
             f"height and width multiples of 8; example size {image_size})")
        echo(f"verified with onnxruntime at 1x3x{image_size}x{image_size} and {CHECK_SHAPE[0]}x3x{CHECK_SHAPE[1]}x{CHECK_SHAPE[2]}: "
             f"max probability difference {worst[0]:.1e} (tolerance {TOLERANCE:g})")
    return out
