"""Runners: one small protocol in front of every way the model can run.

A *runner* maps the model's two inputs at its input size S — RGB uint8 images B×3×S×S and uint8
Canny maps B×1×S×S — to the final head's probabilities, float32 B×S×S (a one-input ONNX model
ignores the Canny argument: it computes the map itself). :class:`TorchRunner` runs PyTorch
weights, :class:`OnnxRunner` an exported ONNX model through onnxruntime, and
:class:`msrfnet.accel.pt2_runner.Pt2Runner` an int8 AOTInductor package. :func:`open_runner`
picks one from the command-line choices (``--weights`` / ``--onnx`` / ``--pt2``, ``--device``,
``--exact``) and returns the configuration the model was trained with; it is the one place
where :class:`msrfnet.inference.segmenter.Segmenter` (and so ``msrf predict`` / ``msrf test`` /
``msrf serve``) gets its model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from msrfnet.accel.cpu import cpu_supports_bf16, flush_denormals, optimize_for_cpu_inference
from msrfnet.config import Config
from msrfnet.errors import MSRFError, first_line
from msrfnet.model.loading import load_one_class_model
from msrfnet.model.msrfnet import scale_pixels
from msrfnet.options import check_image_size
from msrfnet.weights.checkpoint import HUB_WEIGHTS, WEIGHTS_NAME, read_checkpoint
from msrfnet.weights.resolve import resolve_weights

__all__ = [
    "Runner",
    "TorchRunner",
    "OnnxRunner",
    "sigmoid",
    "predict_probabilities",
    "to_original_size",
    "load_torch_runner",
    "open_runner",
    "checkpoint_tiling",
    "model_file",
]

log = logging.getLogger("msrfnet")


def resolve_device(device: str | None = "auto"):
    """``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` → a
    ``torch.device`` that exists here; anything else is an error naming the choice."""
    import torch

    spec = (device or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise MSRFError(
            f"--device {device}: not a device (auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (dev.index or 0) >= count:
            raise MSRFError(f"--device {device}: this machine has {count} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise MSRFError(f"--device {device}: Apple MPS is not available here")
    elif dev.type != "cpu":
        raise MSRFError(f"--device {device}: not a device (auto, cpu, cuda, cuda:N or mps)")
    return dev


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large negative logits."""
    return np.exp(-np.logaddexp(0.0, -x)).astype(np.float32)


class TorchRunner:
    """Final-mask probabilities of a PyTorch MSRF-Net: uint8 image B×3×S×S and uint8 Canny
    B×1×S×S in, float32 B×S×S out.

    On CUDA: bf16 autocast and channels-last (as training). On a CPU with native bfloat16
    (AVX512-BF16/AMX): :func:`~msrfnet.accel.cpu.optimize_for_cpu_inference` (bf16 weights,
    sub-pixel up-convs, channels-last; ≈ 2× faster, probabilities within ~1e-2 of float32);
    ``exact=True``, or a CPU without bf16, runs float32. ``numerics`` names what runs.

    Off CUDA the model runs one image per call (``per_image``), so that an image's
    probabilities do not depend on the other images of the batch: PyTorch's CPU element-wise
    kernels split a tensor between threads at fixed flat offsets and compute the last elements
    before each split with a scalar tail instead of the vector body, so with batching (at 3
    threads, say) a pixel's value depended on where in the batch its image sat, and a resumed
    ``msrf predict --skip-existing`` rewrote a mask with different bytes; and float32
    convolutions chose their kernels by batch size. On one thread one image per call is as fast
    as batching, or faster (docs/PERFORMANCE.md). Results are identical for a given number of
    threads; another number of threads changes float32's last bits (not bfloat16's, measured).
    """

    def __init__(self, model, device=None, exact: bool = False):
        import torch

        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.cuda = self.device.type == "cuda"
        model = model.to(self.device).eval()
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
            self.numerics = "bfloat16 autocast (CUDA)"
        elif not exact and cpu_supports_bf16():
            model = optimize_for_cpu_inference(model, dtype=torch.bfloat16)
            self.numerics = "bfloat16 (CPU fast path; --exact for float32)"
        else:
            self.numerics = "float32"
        self.model = model
        self.per_image = not self.cuda  # see the class docstring

    def __call__(self, images: np.ndarray, canny: np.ndarray) -> np.ndarray:
        if not self.per_image or len(images) < 2:
            return self._run(images, canny)
        return np.concatenate(
            [self._run(images[i : i + 1], canny[i : i + 1]) for i in range(len(images))]
        )

    def _run(self, images: np.ndarray, canny: np.ndarray) -> np.ndarray:
        """One model call on the whole of ``images`` (B×3×S×S) → B×S×S probabilities."""
        import torch

        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        with flush_denormals(not self.cuda), torch.inference_mode():
            x = scale_pixels(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
            c = torch.from_numpy(np.ascontiguousarray(canny)).to(self.device).float()
            x, c = x.contiguous(memory_format=fmt), c.contiguous(memory_format=fmt)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                logits = self.model(x, c).final
            return torch.sigmoid(logits[:, 0].float()).cpu().numpy()


class OnnxRunner:
    """The same contract as :class:`TorchRunner` for an exported model, through onnxruntime."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise MSRFError(f"{path}: no such ONNX file")
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.add_session_config_entry(
            "session.set_denormal_as_zero", "1"
        )  # as TorchRunner, for speed
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception classes
            first = first_line(e)
            raise MSRFError(f"{path}: not a readable ONNX model ({first})") from e
        names = sorted(i.name for i in self.session.get_inputs())
        self.single_input = names == ["image"]  # msrf export's default: Canny in the graph
        if names != ["canny", "image"] and not self.single_input:
            raise MSRFError(
                f"{path}: expected ONNX inputs 'image' and 'canny' (an msrf export), got {names}"
            )
        out = self.session.get_outputs()[0]
        if isinstance(out.shape[1], int) and out.shape[1] != 1:
            raise MSRFError(
                f"{path}: {out.shape[1]} output classes; msrf predict handles one-class models"
            )
        self.output = out.name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        quant = self.metadata.get("quantization")
        self.numerics = f"onnxruntime, {'int8' if quant else 'float32'}"

    def __call__(self, images: np.ndarray, canny: np.ndarray) -> np.ndarray:
        if self.single_input:  # uint8 pixels in, probabilities out
            return self.session.run(
                [self.output], {"image": np.ascontiguousarray(images, np.uint8)}
            )[0][:, 0]
        feed = {
            "image": scale_pixels(images),
            "canny": canny.astype(np.float32),
        }
        logits = self.session.run([self.output], feed)[0]
        return sigmoid(logits[:, 0])


Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def predict_probabilities(
    runner: Runner, images: np.ndarray, canny: np.ndarray, *, tta: bool = False
) -> np.ndarray:
    """B×S×S probabilities; with ``tta`` the mean over identity, left-right and up-down flips."""
    prob = runner(images, canny)
    if not tta:
        return prob
    total = prob.astype(np.float64)
    for axis in (3, 2):  # W, then H of the B×C×H×W inputs; the output's axis is one less
        flipped = runner(np.flip(images, axis).copy(), np.flip(canny, axis).copy())
        total += np.flip(flipped, axis - 1)
    return (total / 3).astype(np.float32)


def to_original_size(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """A model-resolution probability map resized (bilinear) to H×W, float32."""
    if prob.shape == (height, width):
        return prob.astype(np.float32, copy=False)
    return cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def load_torch_runner(
    weights: str | Path | None,
    *,
    prefer_runs: bool,
    exact: bool = False,
    device: str | None = "auto",
):
    """Resolve and load PyTorch weights: (runner, their checkpoint path, Config); ``device`` as
    :func:`resolve_device` takes it; ``exact``: float32 on the CPU (see :class:`TorchRunner`).
    Which weights and numerics is logged (INFO)."""

    dev = resolve_device(device)
    model, path, cfg = load_one_class_model(weights, prefer_runs=prefer_runs, map_location=dev)
    runner = TorchRunner(model, dev, exact=exact)
    log.info("numerics: %s", runner.numerics)
    return runner, path, cfg


def open_runner(
    weights: str | Path | None = None,
    *,
    onnx: str | Path | None = None,
    pt2: str | Path | None = None,
    image_size: int | None = None,
    exact: bool = False,
    device: str | None = "auto",
    prefer_runs: bool = False,
):
    """(runner, model file, Config) for PyTorch ``weights`` (None: a run of ./runs with
    ``prefer_runs``, else the shipped weights) or an exported model (``onnx``: onnxruntime;
    ``pt2``: an int8 package, CPU only). An exported model's Config holds what its metadata
    records (image size, Canny thresholds, variant, normalisation); ``image_size`` overrides
    the image size (a ``.pt2`` package is compiled for one)."""

    if onnx is not None and pt2 is not None:
        raise MSRFError("pass either --onnx or --pt2, not both")
    exported = onnx if onnx is not None else pt2
    if exported is None:
        runner, path, cfg = load_torch_runner(
            weights, prefer_runs=prefer_runs, exact=exact, device=device
        )
        if image_size is not None:
            cfg.image_size = check_image_size(image_size)
        return runner, path, cfg
    if weights is not None:
        raise MSRFError(
            "pass either --weights (PyTorch) or an exported model (--onnx/--pt2), not both"
        )
    if pt2 is not None:
        from msrfnet.accel.pt2_runner import Pt2Runner

        runner = Pt2Runner(pt2)
        if image_size not in (None, runner.size):
            raise MSRFError(
                f"{pt2}: compiled for {runner.size}×{runner.size} inputs; "
                f"export again for --image-size {image_size}"
            )
        where = f"pt2: {pt2}, {runner.numerics}"
    else:
        runner = OnnxRunner(onnx)
        where = f"onnx: {onnx} (onnxruntime {', '.join(runner.session.get_providers())})"
    meta = runner.metadata
    try:
        cfg = Config(
            image_size=check_image_size(image_size or int(meta.get("image_size", 256))),
            canny_low=float(meta.get("canny_low", 10)),
            canny_high=float(meta.get("canny_high", 1000)),
            variant=meta.get("variant", "official"),
            normalize=meta.get("normalize", "minmax"),
        )
    except ValueError as e:
        raise MSRFError(f"{exported}: unreadable msrfnet metadata ({e})") from e
    log.info("%s, image size %s", where, cfg.image_size)
    return runner, Path(exported), cfg


def model_file(weights=None, onnx=None, pt2=None) -> Path | None:
    """The file whose bytes are the model :func:`open_runner` would load for these choices
    (``prefer_runs=False``), without loading it; None when it cannot be found (the load then
    names the problem). ``msrf predict`` records its digest with each output it writes."""
    if onnx is not None or pt2 is not None:
        path = Path(onnx if onnx is not None else pt2)
        return path if path.is_file() else None
    try:
        path = resolve_weights(weights, prefer_runs=False)
    except MSRFError:
        return None
    if path.is_dir():
        path = path / (HUB_WEIGHTS if (path / HUB_WEIGHTS).is_file() else WEIGHTS_NAME)
    return path if path.is_file() else None


def checkpoint_tiling(weights) -> tuple[int, float | None] | None:
    """(patch size, scale) of weights trained at native scale, None for the resize protocol (or
    weights that cannot be read: loading them names the problem). Reads only the stored
    config, so that the outputs can be planned before the model loads."""
    import json

    path = model_file(weights)
    if path is None:
        return None
    try:
        if path.suffix == ".safetensors":  # the config is in the header: no tensors read
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                stored = json.loads((f.metadata() or {}).get("config", "{}"))
            cfg = Config.from_dict(stored if isinstance(stored, dict) else {})
        else:
            cfg = read_checkpoint(path)[1]
    except Exception:  # noqa: BLE001 - the load that follows reports it properly
        return None
    return (int(cfg.patch_size), cfg.scale) if cfg.patch_size else None
