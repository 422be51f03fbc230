"""int8 ONNX for CPU inference: static (calibrated) onnxruntime quantization of an ``msrf export``.

Why int8: on a CPU with AVX512-VNNI the model's convolutions run about twice as fast in int8 as in
bfloat16, the fastest PyTorch path, for a DSC within about 0.001 of float32 (docs/PERFORMANCE.md).

Two rewrites of the float graph make every convolution int8; neither changes what it computes:

* **sub-pixel upsampling** (the float export is built with ``upsampling="subpixel-onnx"``):
  onnxruntime has no int8 ``ConvTranspose`` on a CPU, so each stride-2 transposed conv becomes an
  ordinary conv with 4·C_out outputs (int8) and a ``DepthToSpace`` (a uint8 copy)
  (:mod:`msrfnet.model.upsampling`), its weight frozen to a constant so that the quantizer sees a
  weight, not a graph;
* **pad folding** (:func:`fold_pads`): the TF-style asymmetric "same" padding is a ``Pad`` node
  before its conv; onnxruntime runs a quantized ``Pad`` in float32 (dequantize, pad, quantize),
  so constant zero pads are moved into the conv's own (asymmetric) ``pads``.

Quantization: QDQ format, int8 per-channel weights, uint8 activations, MinMax calibration on
training images prepared exactly as at inference. Calibrate on images like the ones the model will
see: the default, the bundled kdsb sample, suits the shipped nuclei weights, not a model trained
on polyps.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msrfnet.data import read_image, sample_root
from msrfnet.data.files import is_image_file, list_image_files
from msrfnet.data.preprocess import model_inputs
from msrfnet.errors import MSRFError, first_line
from msrfnet.export.destination import check_destination
from msrfnet.export.onnx import export_onnx
from msrfnet.model.msrfnet import scale_pixels
from msrfnet.options import check_image_size
from msrfnet.weights.resolve import resolve_weights

__all__ = [
    "DEFAULT_COUNT",
    "METHODS",
    "UPSAMPLING",
    "fold_pads",
    "calibration_files",
    "default_calibration",
    "calibration_folders",
    "calibration_inputs",
    "quantize_onnx",
    "export_int8",
]

log = logging.getLogger("msrfnet")

DEFAULT_COUNT = 16
METHODS = ("minmax", "percentile", "entropy")
#: the float export's up-convolutions (``msrfnet.model.upsampling``; verified by the export
#: against the model with Keras' transposed convolutions)
UPSAMPLING = "subpixel-onnx"


# --- float-graph rewrites -----------------------------------------------------------------------


def fold_pads(model) -> int:
    """Move constant zero ``Pad`` nodes (spatial axes only) into the ``Conv`` nodes they feed, in
    place on an ``onnx.ModelProto``; returns how many were folded."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    dropped = []
    for node in graph.node:
        if node.op_type != "Pad" or node.output[0] in outputs or node.input[1] not in inits:
            continue
        if next((a.s for a in node.attribute if a.name == "mode"), b"constant") != b"constant":
            continue
        value = node.input[2] if len(node.input) > 2 else ""
        if value and (value not in inits or np.any(numpy_helper.to_array(inits[value]) != 0)):
            continue
        if len(node.input) > 3 and node.input[3]:  # explicit axes: not the plain NCHW layout
            continue
        pads = numpy_helper.to_array(inits[node.input[1]]).tolist()
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            continue
        convs = users.get(node.output[0], [])
        if not convs or any(c.op_type != "Conv" or c.input[0] != node.output[0] for c in convs):
            continue
        for conv in convs:
            attr = next((a for a in conv.attribute if a.name == "pads"), None)
            old = list(attr.ints) if attr is not None else [0, 0, 0, 0]
            if attr is not None:
                conv.attribute.remove(attr)
            conv.attribute.append(
                onnx.helper.make_attribute(
                    "pads", [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
                )
            )
            conv.input[0] = node.input[0]
        dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    return len(dropped)


# --- calibration ----------------------------------------------------------------------------------


def calibration_files(
    source: str | Path | Sequence[str | Path], n: int = DEFAULT_COUNT
) -> list[Path]:
    """``n`` images, evenly spaced in name order, from a list of files or a folder: a dataset root
    (its ``train/images``: calibrate on training images, never on the test split), an ``images``
    folder's parent, or a folder of images."""

    if n < 1:
        raise MSRFError(f"calibration count {n}: must be at least 1")
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise MSRFError(f"{folder}: no such calibration folder")
        for sub in (folder / "train" / "images", folder / "images", folder):
            files = list_image_files(sub) if sub.is_dir() else []
            if files:
                break
        if not files:
            raise MSRFError(
                f"{folder}: no images for calibration (looked in train/images, images and the "
                "folder itself)"
            )
    else:
        files = [Path(f) for f in source]
        missing = next((f for f in files if not is_image_file(f)), None)
        if missing is not None:
            raise MSRFError(f"{missing}: no such calibration image")
        if not files:
            raise MSRFError("no calibration images given")
    step = max(1, len(files) // n)  # evenly spaced: not just the first few of one acquisition
    return files[::step][:n]


def default_calibration(
    calibration: str | Path | Sequence[str | Path] | None,
) -> str | Path | Sequence[str | Path]:
    """``calibration``, or when None the bundled sample's training images (said in a log line)."""

    if calibration is not None:
        return calibration
    log.info(
        "calibration: the bundled kdsb sample's training images (pass --calibration for a model "
        "trained on other images)"
    )
    return sample_root() / "train" / "images"


def calibration_folders(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The folders a calibration source reads: the folder itself, or each image file's folder
    (an export may not be written into them)."""
    if isinstance(source, (str, Path)):
        return [Path(source)]
    return sorted({Path(f).parent for f in source})


def calibration_inputs(
    files: Sequence[Path], image_size: int, canny_low: float, canny_high: float
) -> list[dict[str, np.ndarray]]:
    """One feed per image, pre-processed exactly as ``OnnxRunner`` feeds the model."""

    feeds = []
    for f in files:
        images, canny = model_inputs([read_image(f)], image_size, canny_low, canny_high)
        feeds.append({"image": scale_pixels(images), "canny": canny.astype(np.float32)})
    return feeds


# --- quantization ---------------------------------------------------------------------------------


def _session(path: str | Path, name: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception classes
        first = first_line(e)
        raise MSRFError(f"{name}: not a loadable ONNX model ({first})") from e


@dataclass(frozen=True)
class _Source:
    """A float32 ``msrf export`` read for quantization: the model and its metadata."""

    path: Path
    model: object  # onnx.ModelProto
    metadata: dict[str, str]


def _read_source(src: Path) -> _Source:
    """Load ``src`` and refuse what is not a float two-input ``msrf export``."""
    import onnx

    if not src.is_file():
        raise MSRFError(f"{src}: no such ONNX file")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf/onnx decode errors
        raise MSRFError(f"{src}: not a readable ONNX model ({type(e).__name__})") from e
    names = sorted(i.name for i in model.graph.input)
    if names != ["canny", "image"]:
        raise MSRFError(
            f"{src}: expected ONNX inputs 'image' and 'canny' (an msrf export), got {names}"
        )
    if any(
        n.domain == "com.microsoft" or n.op_type in ("QuantizeLinear", "QLinearConv")
        for n in model.graph.node
    ):
        raise MSRFError(f"{src}: already quantized; quantize the float32 export")
    return _Source(src, model, {p.key: p.value for p in model.metadata_props})


def _preprocessing(source: _Source, image_size, canny_low, canny_high) -> tuple[int, float, float]:
    """The calibration inputs' size and Canny thresholds: as given, else the model's metadata."""
    meta = source.metadata
    try:
        size = check_image_size(int(image_size if image_size is not None else meta["image_size"]))
        low = float(canny_low if canny_low is not None else meta["canny_low"])
        high = float(canny_high if canny_high is not None else meta["canny_high"])
    except KeyError as e:
        raise MSRFError(
            f"{source.path}: no {e.args[0]} in the model's metadata; pass it explicitly"
        ) from e
    return size, low, high


def _quantize_into(
    source: _Source, tmp: str, feeds: list[dict[str, np.ndarray]], method: str, description: str
) -> None:
    """Pre-process, fold the pads, quantize (QDQ, calibrated on ``feeds``) into ``tmp`` with the
    source's metadata plus ``quantization``."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    # onnxruntime warns about every initializer its optimiser drops: noise for a user
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory(prefix="msrf-quant-") as work:
        pre, folded, quant = (str(Path(work) / f) for f in ("pre.onnx", "folded.onnx", "int8.onnx"))
        # onnxruntime's basic optimisations (constant folding, BatchNorm into Conv) so that
        # every conv weight is an initializer; its symbolic shape inference fails on this graph
        quant_pre_process(str(source.path), pre, skip_symbolic_shape=True)
        graph = onnx.load(pre)
        fold_pads(graph)
        onnx.save(graph, folded)
        # the quantizer logs one root-logger warning per BatchNorm it leaves in float: noise
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            quantize_static(
                folded,
                quant,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(
                    CalibrationMethod, {"minmax": "MinMax"}.get(method, method.capitalize())
                ),
            )
        finally:
            root.setLevel(level)
        result = onnx.load(quant)
        del result.metadata_props[:]
        for key, value in {**source.metadata, "quantization": description}.items():
            result.metadata_props.add(key=key, value=value)
        onnx.save(result, tmp)


def quantize_onnx(
    fp32_onnx_path: str | Path,
    out_path: str | Path,
    calibration: str | Path | Sequence[str | Path],
    image_size: int | None = None,
    canny_low: float | None = None,
    canny_high: float | None = None,
    n: int = DEFAULT_COUNT,
    method: str = "minmax",
    overwrite: bool = False,
) -> Path:
    """Quantize an ``msrf export`` model to int8 at ``out_path`` (see the module docstring);
    ``out_path`` is checked as :func:`msrfnet.export.destination.check_destination` says once the
    inputs are (an ``.onnx`` name, not the source, not in the calibration folder; an earlier export
    replaced only with ``overwrite``), before the calibration images are read.

    ``image_size``/``canny_*`` default to the model's metadata (the calibration inputs must be
    prepared as at inference). The metadata is kept, plus a ``quantization`` entry. The result is
    loaded and run once before it is kept; returns ``out_path``.

    Raises:
        MSRFError: a missing or unreadable model or calibration image, bad options, or a result
            that does not load or gives non-finite outputs (one line naming the file).
    """
    import onnxruntime as ort

    src, out = Path(fp32_onnx_path), Path(out_path)
    method = method.lower()
    if method not in METHODS:
        raise MSRFError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    source = _read_source(src)
    size, low, high = _preprocessing(source, image_size, canny_low, canny_high)
    files = calibration_files(calibration, n)
    if out.resolve() == src.resolve():
        raise MSRFError(
            f"{out}: is the model being quantized; write the int8 model to another file"
        )
    destination = check_destination(
        out, "int8-onnx", inputs=calibration_folders(calibration), overwrite=overwrite
    )
    feeds = calibration_inputs(files, size, low, high)
    description = (
        f"int8 static QDQ (onnxruntime {ort.__version__}): per-channel int8 weights, uint8 "
        f"activations, {method} calibration on {len(files)} images at {size}x{size}"
    )
    if any(n.op_type == "DepthToSpace" for n in source.model.graph.node):
        description += "; stride-2 transposed convs as conv + DepthToSpace"

    def write(tmp: str) -> None:
        _quantize_into(source, tmp, feeds, method, description)
        got = _session(tmp, out).run(None, feeds[0])
        if not all(np.isfinite(a).all() for a in got):
            raise MSRFError(f"{out}: the quantized model gives non-finite outputs; not kept")

    try:
        destination.write_file(write)
    except MSRFError:
        raise
    except Exception as e:  # the quantizer's own failures
        first = first_line(e)
        raise MSRFError(f"{src}: int8 quantization failed ({type(e).__name__}: {first})") from e
    log.info("wrote %s (%.1f MiB; %s)", out, out.stat().st_size / 2**20, description)
    return out


def export_int8(
    weights: str | Path | None = None,
    out: str | Path = "msrfnet_int8.onnx",
    calibration: str | Path | Sequence[str | Path] | None = None,
    n: int = DEFAULT_COUNT,
    opset: int = 17,
    image_size: int | None = None,
    method: str = "minmax",
    overwrite: bool = False,
) -> Path:
    """``msrf export --int8``: a verified float32 export with sub-pixel upsampling (to a temporary
    file), quantized to ``out``. ``calibration`` defaults to the package's sample training images,
    ``image_size`` to the checkpoint's.
    ``out`` is checked first (as :func:`msrfnet.export.onnx.export_onnx` does), before any work."""

    calibration = default_calibration(calibration)
    weights_folder = resolve_weights(weights, prefer_runs=False).parent
    check_destination(
        out,
        "int8-onnx",
        overwrite=overwrite,
        inputs=[weights_folder, *calibration_folders(calibration)],
    )
    with tempfile.TemporaryDirectory(prefix="msrf-export-") as work:
        fp32 = export_onnx(
            weights,
            Path(work) / "fp32.onnx",
            opset=opset,
            image_size=image_size,
            upsampling=UPSAMPLING,
            result_name="float32 export",  # a temporary file: not named as a result
        )
        return quantize_onnx(fp32, out, calibration, n=n, method=method, overwrite=overwrite)
