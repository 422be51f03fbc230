"""The model's stride-2 up-convolutions, and their exact sub-pixel form, chosen at construction.

Keras' ``Conv2DTranspose(strides=2, padding='same')`` is
:class:`~msrfnet.model.layers.SameConvTranspose2d`. A stride-2 transposed convolution is four
ordinary convolutions, one per output phase (even/odd row × even/odd column), so it equals one
ordinary convolution with 4·C_out outputs followed by a pixel shuffle; for the DSDF blocks' 3×3::

    ConvT(k=3, s=2, crop to 2H)(x) == shuffle2(conv2×2(x padded by 1 at the bottom/right, W'))

where ``W'`` spreads the k×k taps of ``weight`` over the four phases (a zero where a phase has no
tap). :class:`SubPixelConvTranspose2d` computes it that way, with the same parameters and
``state_dict`` and the same function up to float rounding. It exists for speed: CPU libraries run
stride-2 transposed convolutions far slower than ordinary ones, and the int8 back ends have none
(``docs/PERFORMANCE.md``).

``MSRFNet(upsampling=...)`` picks the form once, at construction (:data:`UPSAMPLING`); a model of
one form loads the weights of any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msrfnet.model.layers import SameConvTranspose2d
from msrfnet.options import check, choice

__all__ = ["UPSAMPLING", "SubPixelConvTranspose2d", "up_conv", "freeze_upsampling"]

#: ``MSRFNet(upsampling=...)``: which stride-2 up-convolutions take the sub-pixel form, and which
#: :class:`SubPixelConvTranspose2d` target computes them.
#:
#: * ``"transposed"``: none; every up-convolution is Keras' transposed convolution (the default);
#: * ``"subpixel"``: the DSDF blocks' 3×3 up-exchanges (40 layers), trainable: the training
#:   default (``Config.subpixel``) and the CPU inference copy. The decoder's 4×4 ones already run at
#:   full speed and would cost 36/16 of their work as a 3×3 conv;
#: * ``"subpixel-onnx"`` / ``"subpixel-inductor"``: the 3×3 and the decoder's 4×4 ones, in the
#:   inference forms the int8 ONNX and the int8 inductor exports quantize (call
#:   :func:`freeze_upsampling` once the weights are loaded).
UPSAMPLING = {
    "transposed": ((), "eager"),
    "subpixel": ((3,), "eager"),
    "subpixel-onnx": ((3, 4), "onnx"),
    "subpixel-inductor": ((3, 4), "inductor"),
}


def up_conv(
    in_channels: int, out_channels: int, kernel_size: int, upsampling: str = "transposed"
) -> SameConvTranspose2d:
    """A Keras stride-2 ``Conv2DTranspose(padding='same')`` in the form ``upsampling`` gives
    kernels of this size."""
    kernels, target = UPSAMPLING[check(choice(tuple(UPSAMPLING)), upsampling, "upsampling")]
    if kernel_size in kernels:
        return SubPixelConvTranspose2d(in_channels, out_channels, kernel_size, target=target)
    return SameConvTranspose2d(in_channels, out_channels, kernel_size)


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

    The same parameters (``weight`` C_in×C_out×k×k, ``bias``) and ``state_dict`` as the transposed
    conv; ``W'`` is gathered from ``weight`` on every call (differentiable) until :meth:`freeze`.
    ``target`` picks the graph, each the same function:

    * ``"eager"``: trainable; the input padded inside the conv and cropped, and the shuffle one
      copy of C_out-wide rows in channels-last memory (the output follows the input's layout);
    * ``"onnx"``: ``W'`` in ``F.pixel_shuffle``'s channel order (one ``DepthToSpace``), the
      asymmetric padding an explicit pad that ``accel/onnx_int8.fold_pads`` moves into the conv;
    * ``"inductor"``: the explicit pad, and a view/permute shuffle of phase-major channels, which
      inductor turns into row copies in channels-last memory (``F.pixel_shuffle``'s order gave it
      a scalar loop, ``docs/PERFORMANCE.md``).
    """

    TARGETS = ("eager", "onnx", "inductor")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        target: str = "eager",
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=2, bias=bias)
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {', '.join(self.TARGETS)}, got {target!r}")
        self.target = target
        index, before, after = _subpixel_index(kernel_size, self.padding[0])
        self._size, self._before, self._after = index.shape[-1], before, after
        # the eager form pads symmetrically inside the conv (no copy of the input); the window
        # that the explicit pad (before, after) would give starts at `_start`
        self._conv_pad = max(before, after)
        self._start = self._conv_pad - before
        # non-persistent: they follow .to(device/dtype) and stay out of the state_dict
        self.register_buffer("sp_index", index.reshape(-1), persistent=False)
        self.register_buffer("frozen_weight", None, persistent=False)
        self.register_buffer("frozen_bias", None, persistent=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, target={self.target}"

    def subpixel_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W'`` (4·C_out × C_in × K × K) and the bias repeated per phase, differentiable in
        ``weight`` and ``bias``. Channel ``(2a + b)·C_out + c`` (phase-major), or for the
        ``"onnx"`` target ``c·4 + 2a + b`` (pixel_shuffle's order)."""
        w = self.weight  # C_in × C_out × k × k
        cin, cout, kh, kw = w.shape
        flat = w.transpose(0, 1).reshape(cout, cin, kh * kw)
        flat = torch.cat([flat, flat.new_zeros(cout, cin, 1)], dim=2)
        s = self._size
        wp = flat.index_select(2, self.sp_index).reshape(cout, cin, 2, 2, s, s)
        if self.target == "onnx":
            wp = wp.permute(0, 2, 3, 1, 4, 5).reshape(4 * cout, cin, s, s)
            bias = None if self.bias is None else self.bias.repeat_interleave(4)
            return wp, bias
        wp = wp.permute(2, 3, 0, 1, 4, 5).reshape(4 * cout, cin, s, s)
        bias = None if self.bias is None else self.bias.repeat(4)
        return wp, bias

    @torch.no_grad()
    def freeze(self) -> None:
        """Compute ``W'`` once, as buffers, for inference with fixed weights: no gather per call,
        and in an exported graph a constant that a quantizer sees as a weight. A later change of
        ``weight`` is not seen (a later ``.to(dtype)`` is: the buffers follow it)."""
        self.frozen_weight, self.frozen_bias = self.subpixel_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.frozen_weight is not None:
            wp, bias = self.frozen_weight, self.frozen_bias
        else:
            wp, bias = self.subpixel_weight()
        b, _, h, w = x.shape
        cout = self.out_channels
        if self.target != "eager":
            if self._before == self._after:
                y = F.conv2d(x, wp, bias, padding=self._before)
            else:
                pad = (self._before, self._after, self._before, self._after)
                y = F.conv2d(F.pad(x, pad), wp, bias)
            if self.target == "onnx":
                return F.pixel_shuffle(y, 2)
            # (B, [a, b, C], H, W) → (B, C, H, a, W, b) = (B, C, 2H, 2W)
            y = y.view(b, 2, 2, cout, h, w).permute(0, 3, 4, 1, 5, 2)
            return y.reshape(b, cout, 2 * h, 2 * w)
        y = F.conv2d(x, wp, bias, padding=self._conv_pad)
        if y.shape[-2:] != (h, w):
            s = self._start
            y = y[..., s : s + h, s : s + w]
        # (B, H, W, [a, b, C]) → (B, H, a, W, b, C) = (B, 2H, 2W, C): one copy, channels-last
        y = y.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, cout).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(b, 2 * h, 2 * w, cout).permute(0, 3, 1, 2)
        if not x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous()  # follow an NCHW input's layout
        return y


def freeze_upsampling(model: torch.nn.Module) -> int:
    """:meth:`SubPixelConvTranspose2d.freeze` every sub-pixel layer under ``model`` (an inference
    model whose weights are loaded); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, SubPixelConvTranspose2d)]
    for m in layers:
        m.freeze()
    return len(layers)
