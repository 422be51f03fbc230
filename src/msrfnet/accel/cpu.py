"""CPU inference: a frozen bfloat16 / channels-last copy of the model where the CPU has native
bfloat16, with sub-pixel up-convolutions, and denormal flushing. The numbers behind the choice are
in ``docs/PERFORMANCE.md``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from msrfnet.model.msrfnet import MSRFNet
from msrfnet.model.outputs import MSRFOutput
from msrfnet.model.upsampling import freeze_upsampling

__all__ = [
    "flush_denormals",
    "cpu_supports_bf16",
    "CPUInferenceModel",
    "optimize_for_cpu_inference",
]


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


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except Exception:  # pragma: no cover - older builds
        return False


class CPUInferenceModel(nn.Module):
    """A frozen inference copy of an MSRF-Net: float32 image/canny in, float32 logits out.

    Inside, inputs are cast to ``dtype`` in channels-last layout; outputs come back as float32
    :class:`~msrfnet.model.MSRFOutput` (contiguous NCHW). Always in eval mode.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        self.eval()

    def train(self, mode: bool = True) -> "CPUInferenceModel":
        return super().train(False)

    def forward(self, image: torch.Tensor, canny: torch.Tensor) -> MSRFOutput:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        image = image.to(self.dtype).contiguous(memory_format=fmt)
        out = self.model(image, canny.to(self.dtype))
        return MSRFOutput(*(t.float().contiguous() for t in out))


def optimize_for_cpu_inference(
    model: MSRFNet,
    *,
    dtype: torch.dtype | str | None = "auto",
    channels_last: bool = True,
    subpixel: bool = True,
) -> CPUInferenceModel:
    """The fastest exact-enough MSRF-Net for CPU inference, as a new module (``model`` untouched).

    Args:
        model: an :class:`~msrfnet.model.MSRFNet` (any device; the copy lives on the CPU, built
            with :meth:`~msrfnet.model.MSRFNet.rebuild`).
        dtype: ``"auto"`` → bfloat16 where the CPU has native bf16 (AVX512-BF16/AMX), else float32;
            or ``torch.bfloat16`` / ``torch.float32`` / ``None`` (= float32).
        channels_last: NHWC memory (oneDNN's native layout; faster in both dtypes).
        subpixel: the copy computes the DSDF up-convolutions as conv + pixel shuffle
            (``upsampling="subpixel"``, exact); else as ``model`` does.

    Call the result under ``torch.inference_mode()``; it takes and returns float32 like the model.
    bfloat16 changes probabilities by ~1e-2 at most on a random-weights model (``msrf bench``
    reports the measured difference); use ``dtype=torch.float32`` where that matters.
    """
    if dtype == "auto":
        dtype = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    elif dtype is None:
        dtype = torch.float32
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(
            "optimize_for_cpu_inference: dtype must be 'auto', torch.float32 or torch.bfloat16, "
            f"got {dtype!r}"
        )
    options = {"upsampling": "subpixel"} if subpixel else {}
    net = model.rebuild(**options).cpu().eval().requires_grad_(False).to(dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    freeze_upsampling(net)  # the weights are fixed: no gathering of W' on every call
    return CPUInferenceModel(net, dtype, channels_last)
