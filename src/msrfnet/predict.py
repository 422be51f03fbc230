"""``msrf predict``: masks for image files of any size, written at each image's original size.

For every image, exactly as in training (``msrfnet.data``, spec §2.2): read as RGB uint8 (grey
repeated, alpha dropped, 16-bit stretched), Pillow-Lanczos resize to S×S (the checkpoint's image
size unless ``image_size`` is given), image/255, and the Canny map of the resized RGB with the
checkpoint's thresholds as the second input. The final head's sigmoid probability is resized back
to the original H×W (OpenCV bilinear), thresholded (≥ ``threshold``) and written as a 0/255 PNG.

Inputs are files or folders; a folder contributes the image files directly inside it (not its
sub-folders; hidden files skipped), sorted by name. Supported: png, jpg, jpeg, tif, tiff, bmp.
The first unreadable file stops the run with one line naming it (masks of earlier batches stay).

Outputs in ``out`` per image ``<stem>``: ``<stem>.png`` (the mask); with ``probabilities``
``<stem>_prob.png``, a 16-bit grey PNG of round(probability·65535) (divide by 65535 to read it
back); with ``overlay`` ``<stem>_overlay.png``, the image with the mask tinted and outlined. Two
inputs with one stem (``a.png``, ``a.jpg``) get ``a`` and ``a-2`` and a warning.

``tta`` averages the probabilities of the image as is, flipped left-right and flipped upside-down
(image and Canny map flipped together, each prediction flipped back).

On a CPU with native bfloat16 the PyTorch model runs in bfloat16 with exact sub-pixel up-convs
(≈ 2× faster; ``exact`` keeps float32); see :class:`TorchRunner`.

``onnx`` runs an exported model (:mod:`msrfnet.export`) through onnxruntime alone, with the image
size and Canny thresholds stored in its metadata (``image_size`` overrides; 256 when absent);
``pt2`` an int8 package of ``msrf export --int8 --out X.pt2`` (:mod:`msrfnet.int8_cpu`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from .errors import MSRFError, first_line

log = logging.getLogger("msrfnet")

MASK_SUFFIX, PROB_SUFFIX, OVERLAY_SUFFIX = "", "_prob", "_overlay"
PRED_COLOR = (255, 40, 200)  # magenta: visible on both dark fluorescence and pink H&E images
TRUTH_COLOR = (40, 230, 40)


# --- inputs -------------------------------------------------------------------------------------


def gather_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders read non-recursively), in order."""
    from .data.io import IMAGE_EXTENSIONS, list_image_files

    if not inputs:
        raise MSRFError("no inputs: pass image files or folders")
    files: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = list_image_files(path)
            if not found:
                raise MSRFError(f"{path}: no image files in this folder ({', '.join(IMAGE_EXTENSIONS)}; sub-folders are not searched)")
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise MSRFError(f"{path}: not a supported image type (expected {', '.join(IMAGE_EXTENSIONS)})")
            found = [path]
        else:
            raise MSRFError(f"{path}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:  # a file named twice (itself and its folder) is predicted once
                seen.add(key)
                files.append(f)
    return files


def output_stems(files: Sequence[Path], suffixes: Sequence[str] = (MASK_SUFFIX,)) -> list[str]:
    """A distinct output stem per file: its own stem, or ``stem-2``, ``stem-3``… when taken.

    A stem is taken when any of its output names (stem + each suffix) is already used, so an input
    called ``a_overlay.png`` cannot overwrite the overlay of ``a.png``.
    """
    used: set[str] = set()
    first: dict[str, Path] = {}
    stems = []
    for f in files:
        stem, k = f.stem, 1
        while any(stem + s in used for s in suffixes):
            k += 1
            stem = f"{f.stem}-{k}"
        if k > 1:
            log.warning("%s: output name %r is taken (by %s); writing %s.png", f, f.stem, first.get(f.stem, "another input"), stem)
        first.setdefault(f.stem, f)
        used.update(stem + s for s in suffixes)
        stems.append(stem)
    return stems


# --- inference ----------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large negative logits."""
    return np.exp(-np.logaddexp(0.0, -x)).astype(np.float32)


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormal floats to zero on the CPU for the duration (PyTorch's default after).

    Denormal activations (sigmoid gates far from 0.5) slow this model's CPU convolutions
    severalfold; flushing changes values below 1e-37 only.
    """
    import torch

    flushed = enabled and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


class TorchRunner:
    """Final-mask probabilities of a PyTorch MSRF-Net: uint8 image B×3×S×S and uint8 Canny
    B×1×S×S in, float32 B×S×S out.

    On CUDA: bf16 autocast and channels-last (as training). On a CPU with native bfloat16
    (AVX512-BF16/AMX): :func:`~msrfnet.speed.optimize_for_cpu_inference` (bf16 weights, sub-pixel
    up-convs, channels-last; ≈ 2× faster, probabilities within ~1e-2 of float32); ``exact=True``,
    or a CPU without bf16, runs float32. ``numerics`` names what runs.
    """

    def __init__(self, model, device=None, exact: bool = False):
        import torch

        from .speed import cpu_supports_bf16, optimize_for_cpu_inference

        self.device = torch.device(device) if device is not None else next(model.parameters()).device
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

    def __call__(self, images: np.ndarray, canny: np.ndarray) -> np.ndarray:
        import torch

        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        with flush_denormals(not self.cuda), torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).float().div_(255)
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
        options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as TorchRunner, for speed
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception classes
            first = first_line(e)
            raise MSRFError(f"{path}: not a readable ONNX model ({first})") from e
        names = sorted(i.name for i in self.session.get_inputs())
        if names != ["canny", "image"]:
            raise MSRFError(f"{path}: expected ONNX inputs 'image' and 'canny' (an msrf export), got {names}")
        out = self.session.get_outputs()[0]
        if isinstance(out.shape[1], int) and out.shape[1] != 1:
            raise MSRFError(f"{path}: {out.shape[1]} output classes; msrf predict handles one-class models")
        self.output = out.name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        quant = self.metadata.get("quantization")
        self.numerics = f"onnxruntime, {'int8' if quant else 'float32'}"

    def __call__(self, images: np.ndarray, canny: np.ndarray) -> np.ndarray:
        feed = {"image": images.astype(np.float32) / np.float32(255), "canny": canny.astype(np.float32)}
        logits = self.session.run([self.output], feed)[0]
        return sigmoid(logits[:, 0])


Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def predict_probabilities(runner: Runner, images: np.ndarray, canny: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """B×S×S probabilities; with ``tta`` the mean over identity, left-right and up-down flips."""
    prob = runner(images, canny)
    if not tta:
        return prob
    total = prob.astype(np.float64)
    for axis in (3, 2):  # W, then H of the B×C×H×W inputs; the output's axis is one less
        flipped = runner(np.flip(images, axis).copy(), np.flip(canny, axis).copy())
        total += np.flip(flipped, axis - 1)
    return (total / 3).astype(np.float32)


def model_inputs(rgb: Sequence[np.ndarray], size: int, canny_low: float, canny_high: float) -> tuple[np.ndarray, np.ndarray]:
    """Training's pre-processing of RGB uint8 images: (uint8 B×3×S×S, uint8 {0,1} B×1×S×S)."""
    from .data import canny_map, resize_image

    resized = [resize_image(r, size) for r in rgb]
    canny = [canny_map(r, canny_low, canny_high) for r in resized]
    return np.stack(resized).transpose(0, 3, 1, 2), np.stack(canny)[:, None]


def check_image_size(size: int, what: str = "image_size") -> int:
    if not isinstance(size, int) or size < 8 or size % 8:
        raise MSRFError(f"{what} {size}: must be a positive multiple of 8 (the encoder halves it 3 times); try {max(8, round(size / 8) * 8)}")
    return size


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise MSRFError(f"threshold {threshold}: must lie in [0, 1] (a probability)")
    return threshold


def load_torch_runner(weights: str | Path | None, *, prefer_runs: bool, echo: Callable[[str], object] | None,
                      exact: bool = False):
    """Resolve and load the weights: (runner, their checkpoint path, Config); ``exact``: float32
    on the CPU (see :class:`TorchRunner`)."""
    import torch

    from .weights_resolve import load_one_class_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, path, cfg = load_one_class_model(weights, prefer_runs=prefer_runs, echo=echo, map_location=device)
    runner = TorchRunner(model, device, exact=exact)
    if echo is not None:
        echo(f"numerics: {runner.numerics}")
    return runner, path, cfg


# --- drawing and writing ------------------------------------------------------------------------


def draw_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = PRED_COLOR,
    *,
    alpha: float = 0.35,
    outline: np.ndarray | None = None,
    outline_color: tuple[int, int, int] = TRUTH_COLOR,
) -> np.ndarray:
    """``rgb`` with ``mask`` tinted and its contour drawn in ``color``; ``outline`` (another mask)
    adds just a contour, e.g. the truth over a prediction. RGB uint8 in and out."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    mask = np.asarray(mask, dtype=bool)
    tint = np.asarray(color, np.float32)
    out[mask] = np.rint((1 - alpha) * out[mask] + alpha * tint).astype(np.uint8)
    thickness = max(1, round(min(out.shape[:2]) / 256))
    for m, c in ((mask, color), (outline, outline_color)):
        if m is not None:
            contours, _ = cv2.findContours(np.asarray(m, np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, tuple(int(v) for v in c), thickness)
    return out


def write_png(path: Path, array: np.ndarray) -> Path:
    """A grey (uint8/uint16) or RGB uint8 array as PNG; works for non-ASCII paths."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8/uint16 array
        raise MSRFError(f"{path}: could not encode PNG")
    try:
        buf.tofile(str(path))
    except OSError as e:
        raise MSRFError(f"{path}: cannot write ({e.strerror or e})") from e
    return path


def to_original_size(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """A model-resolution probability map resized (bilinear) to H×W, float32."""
    if prob.shape == (height, width):
        return prob.astype(np.float32, copy=False)
    return cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


# --- the command --------------------------------------------------------------------------------


def _open_backend(weights, onnx, image_size, echo, exact=False, pt2=None):
    """(runner, image size, (canny_low, canny_high)) for the PyTorch path or an exported model
    (``onnx``: onnxruntime; ``pt2``: an int8 AOTInductor package, :mod:`msrfnet.int8_cpu`)."""
    if onnx is not None and pt2 is not None:
        raise MSRFError("pass either --onnx or --pt2, not both")
    exported = onnx if onnx is not None else pt2
    if exported is not None:
        if weights is not None:
            raise MSRFError("pass either --weights (PyTorch) or an exported model (--onnx/--pt2), not both")
        if pt2 is not None:
            from .int8_cpu import Pt2Runner

            runner = Pt2Runner(pt2)
            if image_size not in (None, runner.size):
                raise MSRFError(f"{pt2}: compiled for {runner.size}×{runner.size} inputs; export again for --image-size {image_size}")
            where = f"pt2: {pt2}, {runner.numerics}"
        else:
            runner = OnnxRunner(onnx)
            where = f"onnx: {onnx} (onnxruntime {', '.join(runner.session.get_providers())})"
        meta = runner.metadata
        try:
            size = image_size or int(meta.get("image_size", 256))
            canny = (float(meta.get("canny_low", 10)), float(meta.get("canny_high", 1000)))
        except ValueError as e:
            raise MSRFError(f"{exported}: unreadable msrfnet metadata ({e})") from e
        if echo is not None:
            echo(f"{where}, image size {size}")
        return runner, check_image_size(size), canny
    runner, _, cfg = load_torch_runner(weights, prefer_runs=False, echo=echo, exact=exact)
    return runner, check_image_size(image_size or cfg.image_size), (cfg.canny_low, cfg.canny_high)


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
    echo: Callable[[str], object] | None = print,
    exact: bool = False,
    pt2: str | Path | None = None,
) -> list[Path]:
    """Predict masks for ``inputs`` (see the module docstring); returns the mask paths in input order.

    Raises:
        MSRFError: a missing or unreadable input (named), bad options, unusable weights/ONNX file.
    """
    from tqdm import tqdm

    from .data import read_image

    check_threshold(threshold)
    if batch_size < 1:
        raise MSRFError(f"batch size {batch_size}: must be at least 1")
    if image_size is not None:
        check_image_size(image_size)
    files = gather_inputs(inputs)
    suffixes = [MASK_SUFFIX] + [PROB_SUFFIX] * probabilities + [OVERLAY_SUFFIX] * overlay
    stems = output_stems(files, suffixes)
    runner, size, (low, high) = _open_backend(weights, onnx, image_size, echo, exact, pt2)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MSRFError(f"{out}: cannot create the output folder ({e.strerror or e})") from e

    batches = [range(i, min(i + batch_size, len(files))) for i in range(0, len(files), batch_size)]
    written: list[Path] = []
    for batch in tqdm(batches, disable=len(batches) <= 1 or echo is None, unit="batch", desc="msrf predict"):
        rgbs = [read_image(files[i]) for i in batch]
        images, canny = model_inputs(rgbs, size, low, high)
        probs = predict_probabilities(runner, images, canny, tta=tta)
        for i, rgb, prob in zip(batch, rgbs, probs):
            full = to_original_size(prob, *rgb.shape[:2])
            mask = full >= threshold
            written.append(write_png(out / f"{stems[i]}{MASK_SUFFIX}.png", np.where(mask, np.uint8(255), np.uint8(0))))
            if probabilities:
                q = np.rint(np.clip(full, 0.0, 1.0) * 65535.0).astype(np.uint16)
                write_png(out / f"{stems[i]}{PROB_SUFFIX}.png", q)
            if overlay:
                write_png(out / f"{stems[i]}{OVERLAY_SUFFIX}.png", draw_overlay(rgb, mask))
    if echo is not None:
        extras = [name for name, on in (("probabilities", probabilities), ("overlays", overlay)) if on]
        how = f" ({size}² model input{', TTA' if tta else ''})"
        echo(f"wrote {len(written)} mask(s){' + ' + ' + '.join(extras) if extras else ''} to {out}/{how}")
    return written

