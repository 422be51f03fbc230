"""Exact speed-ups of MSRF-Net that change no function: sub-pixel transposed convolutions and a
ready CPU-inference model.

**Sub-pixel transposed convolution.** The DSDF blocks hold 40 ``Conv2DTranspose(k=3, s=2,
'same')`` layers (the up-exchange ``U``). oneDNN runs these 3×3 stride-2 transposed convs at
3–15 GFLOP/s on a CPU in bfloat16 (a plain 3×3 conv of the same model reaches ~210 GFLOP/s on one
core): 7.5 GFLOP of the 189 GFLOP forward took ~0.6 s of 1.6 s (one thread, 256², bf16,
channels-last). A stride-2 transposed conv is four ordinary convolutions, one per output phase
(even/odd row × even/odd column), so it equals one ordinary small-kernel conv with 4·C_out outputs
followed by a pixel shuffle::

    ConvT(k=3, s=2, crop to 2H)(x) == shuffle2(conv2x2(pad_top_left(x, 1), W'))

where ``W'`` holds the 9 taps of ``w`` spread over the 4 phases (7 of its 16 taps per channel
pair are zero, so the conv does 16/9 of the nominal work, still ~10× faster in bf16). Equality is
exact up to float rounding (~1e-14 in float64, tests/test_bench.py).

:class:`SubPixelConvTranspose2d` is a drop-in subclass of the model's ``SameConvTranspose2d``:
same parameters, same ``state_dict`` keys, differentiable (``W'`` is gathered from ``weight`` on
every call), so it serves training, ``torch.compile`` and export as well as inference.
:func:`use_subpixel_upsampling` swaps it in, in place.

**CPU inference.** :func:`optimize_for_cpu_inference` returns an eval-mode copy of a model with
the sub-pixel swap, channels-last memory, and (by default) bfloat16 weights and activations,
wrapped so that it takes and returns the same float32 tensors as :class:`~msrfnet.model.MSRFNet`.
The numbers behind the choice are in ``docs/PERFORMANCE.md`` and ``msrf bench --device cpu``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .model.layers import SameConvTranspose2d
from .model.outputs import MSRFOutput

__all__ = [
    "SubPixelConvTranspose2d",
    "use_subpixel_upsampling",
    "CPUInferenceModel",
    "optimize_for_cpu_inference",
    "cpu_supports_bf16",
]


def _subpixel_index(kernel_size: int, padding: int) -> tuple[torch.Tensor, int, int]:
    """Index map for a stride-2 transposed conv → conv + pixel shuffle.

    Output pixel ``o = 2q + a`` (after torch's ``padding`` crop at the top/left) receives input
    ``i = q + δ`` through tap ``k = a + padding − 2δ``. Returns an index of shape (2, 2, K, K) into
    the flattened ``kh·kw`` taps (``kh·kw`` marks "no tap" → a zero), and the (top/left,
    bottom/right) zero padding of the input that makes every ``δ`` a valid conv offset.
    """
    taps: dict[tuple[int, int], int] = {}  # (phase a, offset δ) → tap k
    for a in range(2):
        for k in range(kernel_size):
            num = a + padding - k
            if num % 2 == 0:
                taps[(a, num // 2)] = k
    deltas = [d for _, d in taps]
    dmin, dmax = min(deltas), max(deltas)
    size = dmax - dmin + 1
    none = kernel_size * kernel_size
    index = torch.full((2, 2, size, size), none, dtype=torch.long)
    for (a, da), ka in taps.items():
        for (b, db), kb in taps.items():
            index[a, b, da - dmin, db - dmin] = ka * kernel_size + kb
    return index, -dmin, dmax


class SubPixelConvTranspose2d(SameConvTranspose2d):
    """``SameConvTranspose2d`` (stride 2, output = 2·input) computed as conv + pixel shuffle.

    Same parameters (``weight`` C_in×C_out×k×k, ``bias``) and ``state_dict`` as the layer it
    replaces; build it with :meth:`from_transposed` or swap it in with
    :func:`use_subpixel_upsampling`. Output memory is channels-last (the shuffle is a copy of
    C_out-wide rows in that layout); values equal the transposed conv up to rounding.
    """

    @classmethod
    def from_transposed(cls, layer: SameConvTranspose2d) -> "SubPixelConvTranspose2d":
        if layer.stride != (2, 2) or layer.kernel_size[0] != layer.kernel_size[1] or layer.groups != 1 or layer.dilation != (1, 1):
            raise ValueError(
                f"SubPixelConvTranspose2d: expected a square stride-2 SameConvTranspose2d, got kernel "
                f"{layer.kernel_size}, stride {layer.stride}, groups {layer.groups}, dilation {layer.dilation}"
            )
        new = copy.copy(layer)
        # own registries, the same Parameter objects: an optimizer holding them still works
        new._parameters = dict(layer._parameters)
        new._buffers = dict(layer._buffers)
        new._non_persistent_buffers_set = set(layer._non_persistent_buffers_set)
        new._modules = dict(layer._modules)
        new.__class__ = cls
        new._init_subpixel()
        return new

    def _init_subpixel(self) -> None:
        index, before, after = _subpixel_index(self.kernel_size[0], self.padding[0])
        self._sp_size = index.shape[-1]
        # the conv pads symmetrically by max(before, after) (no copy of the input); the output
        # window that F.pad(before, after) would give starts at `_sp_start`
        self._sp_conv_pad = max(before, after)
        self._sp_start = self._sp_conv_pad - before
        # non-persistent: follows .to(device), stays out of the state_dict
        self.register_buffer("sp_index", index.reshape(-1).to(self.weight.device), persistent=False)
        self._frozen: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def freeze(self) -> None:
        """Compute ``W'`` once, for inference with fixed weights (a later change of ``weight`` or
        dtype is not seen: call it after ``.to(...)``, as :func:`optimize_for_cpu_inference` does)."""
        with torch.no_grad():
            self._frozen = self.subpixel_weight()

    def subpixel_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W'`` (4·C_out × C_in × K × K, phase-major: channel ``(2a + b)·C_out + c``) and the bias
        repeated per phase; differentiable in ``weight`` and ``bias``."""
        w = self.weight  # C_in × C_out × k × k
        cin, cout, kh, kw = w.shape
        flat = w.transpose(0, 1).reshape(cout, cin, kh * kw)
        flat = torch.cat([flat, flat.new_zeros(cout, cin, 1)], dim=2)
        s = self._sp_size
        wp = flat.index_select(2, self.sp_index).reshape(cout, cin, 2, 2, s, s)
        wp = wp.permute(2, 3, 0, 1, 4, 5).reshape(4 * cout, cin, s, s)
        bias = None if self.bias is None else self.bias.repeat(4)
        return wp, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        wp, bias = self._frozen if self._frozen is not None else self.subpixel_weight()
        b, _, h, w = x.shape
        y = F.conv2d(x, wp, bias, padding=self._sp_conv_pad)
        if y.shape[-2:] != (h, w):
            s = self._sp_start
            y = y[..., s:s + h, s:s + w]
        cout = self.out_channels
        # (B, H, W, [a, b, C]) → (B, H, a, W, b, C) = (B, 2H, 2W, C): one copy, channels-last
        y = y.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, cout).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(b, 2 * h, 2 * w, cout).permute(0, 3, 1, 2)
        if not x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous()  # follow an NCHW input's layout
        return y


def _is_swappable(m: nn.Module, kernel_sizes: tuple[int, ...]) -> bool:
    return (
        type(m) is SameConvTranspose2d
        and m.stride == (2, 2)
        and m.kernel_size[0] == m.kernel_size[1]
        and m.kernel_size[0] in kernel_sizes
        and m.groups == 1
        and m.dilation == (1, 1)
    )


def use_subpixel_upsampling(
    model: nn.Module,
    kernel_sizes: tuple[int, ...] = (3,),
    build: Callable[[SameConvTranspose2d], nn.Module] = SubPixelConvTranspose2d.from_transposed,
) -> int:
    """Swap every stride-2 ``SameConvTranspose2d`` with a kernel in ``kernel_sizes`` for
    ``build(layer)`` (default :class:`SubPixelConvTranspose2d`), in place; returns how many.

    The default swaps the 3×3 ones (the 40 DSDF up-exchanges): the 4×4 (decoder) ones already run
    at full speed and would cost 36/16 of their work as a 3×3 conv. Parameters are shared, so
    call it before or after building an optimizer; ``state_dict`` keys do not change.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_swappable(child, kernel_sizes):
                setattr(parent, name, build(child))
                count += 1
    return count


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
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
    model: nn.Module,
    *,
    dtype: torch.dtype | str | None = "auto",
    channels_last: bool = True,
    subpixel: bool = True,
) -> CPUInferenceModel:
    """The fastest exact-enough MSRF-Net for CPU inference, as a new module (``model`` is untouched).

    Args:
        model: an :class:`~msrfnet.model.MSRFNet` (any device; the copy lives on the CPU).
        dtype: ``"auto"`` → bfloat16 where the CPU has native bf16 (AVX512-BF16/AMX), else float32;
            or ``torch.bfloat16`` / ``torch.float32`` / ``None`` (= float32).
        channels_last: NHWC memory (oneDNN's native layout; faster in both dtypes).
        subpixel: compute the 3×3 stride-2 transposed convs as conv + pixel shuffle (exact).

    Call the result under ``torch.inference_mode()``; it takes and returns float32 like the model.
    bfloat16 changes probabilities by ~1e-2 at most on a random-weights model (``msrf bench``
    reports the measured difference); use ``dtype=torch.float32`` where that matters.
    """
    if dtype == "auto":
        dtype = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    elif dtype is None:
        dtype = torch.float32
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"optimize_for_cpu_inference: dtype must be 'auto', torch.float32 or torch.bfloat16, got {dtype!r}")
    net = copy.deepcopy(model).cpu().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if subpixel:
        use_subpixel_upsampling(net)
    net = net.to(dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for m in net.modules():
        if isinstance(m, SubPixelConvTranspose2d):
            m.freeze()  # the weights are fixed: no re-gathering of W' on every call
    return CPUInferenceModel(net, dtype, channels_last)
