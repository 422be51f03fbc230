"""Keras-equivalent building blocks.

The original MSRF-Net is a Keras 2.3.1 / TF 2.2 model. A handful of its operations differ from
PyTorch's look-alikes by a shift or an interpolation rule, and each difference changes the function
(spec §1.8 of ``msrf-net-original.md``). They live here, each small and tested on its own
(``tests/model/test_layers.py``), so that the model files read like the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KERAS_BN_EPS",
    "KERAS_BN_MOMENTUM",
    "keras_bn",
    "SameConv2d",
    "SameConvTranspose2d",
    "legacy_bilinear_upsample",
    "LegacyUpsample",
    "SqueezeExcite",
    "exporting",
    "capturing",
    "glorot_uniform_",
    "he_normal_",
    "keras_init_",
]

#: Keras ``BatchNormalization`` defaults: epsilon 1e-3 and momentum 0.99 (torch counts momentum
#: the other way round: new = (1 - m) * old + m * batch, so 0.99 becomes 0.01).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01


def keras_bn(num_features: int, eps: float = KERAS_BN_EPS) -> nn.BatchNorm2d:
    """BatchNorm2d with Keras' defaults (eps 1e-3, momentum 0.99)."""
    return nn.BatchNorm2d(num_features, eps=eps, momentum=KERAS_BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """``Conv2D(padding='same')`` exactly as TensorFlow pads it.

    TF splits the total padding so that the odd pixel goes to the bottom/right. For stride 1 and an
    odd kernel this is PyTorch's symmetric padding; for a 3×3 stride-2 conv on an even input the
    total padding is 1, all of it at the bottom/right, where ``Conv2d(padding=1)`` would shift the
    result by one pixel (a max difference of ~19 on random data).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
    ):
        # For an input size divisible by the stride (the model guarantees it: sizes are multiples of
        # 8) TF's total padding is max(k - s, 0) whatever the size, so it is static; the odd pixel
        # goes bottom/right. A symmetric pad is left to the conv kernel itself (no extra copy).
        total = max(kernel_size - stride, 0)
        before, after = total // 2, total - total // 2
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=before if before == after else 0,
            bias=bias,
        )
        self._pad = None if before == after else (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pad is not None:
            x = F.pad(x, self._pad)
        return super().forward(x)


class SameConvTranspose2d(nn.ConvTranspose2d):
    """``Conv2DTranspose(strides=2, padding='same')`` as Keras computes it: output = 2·input.

    TF computes the full transposed convolution and crops ``total = k - s`` pixels from it,
    ``total // 2`` at the top/left and the rest at the bottom/right:

    - k=3: full output 2H+1, crop 1 at the bottom/right → ``[:2H, :2W]``;
    - k=4: crop 1 on each side → ``padding=1``;
    - k=1: full output 2H-1, *pad* 1 at the bottom/right → ``output_padding=1``, data at even
      positions, the bias alone at odd ones (official ``Up3``, issue #23).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 2,
        bias: bool = True,
    ):
        total = kernel_size - stride
        if total >= 0:
            padding, output_padding = total // 2, 0
        else:
            padding, output_padding = 0, -total
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            bias=bias,
        )
        # an odd total leaves one extra row/column that TF takes from the end
        self._crop = total >= 0 and total % 2 == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = super().forward(x)
        if self._crop:
            y = y[..., :-1, :-1]
        return y


def legacy_bilinear_upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Keras 2.3.1 ``UpSampling2D(interpolation='bilinear')`` = TF1 ``resize_bilinear``.

    TF1's rule has no half-pixel centres: ``src = dst / f``, ``i0 = floor(src)``,
    ``i1 = min(i0 + 1, n - 1)``. That is exactly ``align_corners=True`` interpolation of the input
    padded by one replicated row/column at the bottom/right, from ``n + 1`` to ``n·f + 1`` samples
    (the step is ``n / (n·f) = 1/f``), cropped to ``n·f``. Using the native kernel keeps it fast
    and exportable. ``F.interpolate(align_corners=False)`` differs by up to ~1.6 on random data.
    """
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    # replicate the last row and column by concatenation: bit-identical to F.pad(mode="replicate"),
    # whose backward trips torch.compile's stride checks with channels_last inputs
    xp = torch.cat([x, x[..., -1:, :]], dim=-2)
    xp = torch.cat([xp, xp[..., -1:]], dim=-1)
    y = F.interpolate(
        xp, size=(h * factor + 1, w * factor + 1), mode="bilinear", align_corners=True
    )
    return y[..., : h * factor, : w * factor]


class LegacyUpsample(nn.Module):
    """:func:`legacy_bilinear_upsample` as a module (Keras ``UpSampling2D(size=f, 'bilinear')``)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return legacy_bilinear_upsample(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as the official ``se_block``: GAP → Dense(C/r, ReLU)
    → Dense(C, sigmoid) → channel-wise scale. Dense layers have biases; r = 16."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // ratio)
        self.fc2 = nn.Linear(channels // ratio, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


# --- graph capture -----------------------------------------------------------------------------
# The model computes one function however it is run. What depends on a graph being recorded
# instead of run is decided here, and only here:
#
# * while :func:`exporting` (TorchScript tracing or scripting, the ONNX exporter), the memory-saving
#   autograd Functions of ``model/dense.py`` have no graph form, so the dense layers run as the
#   plain ``conv(cat(parts))`` (the same values; the saving only matters for training);
# * while :func:`capturing` (any of those, or torch.compile / torch.export tracing with dynamo),
#   shapes are symbolic, so :class:`~msrfnet.model.MSRFNet` does not check the input size itself,
#   and the DSDF blocks apply LeakyReLU out of place to their up-exchange's output, which can be a
#   view (a crop or a pixel shuffle): in place on a view, torch.export guards the batch size (≤ 2).


def exporting() -> bool:
    """True while TorchScript tracing/scripting or the ONNX exporter records the model."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def capturing() -> bool:
    """True while any graph capture records the model: :func:`exporting`, torch.compile or
    torch.export."""
    return exporting() or torch.compiler.is_compiling()


# --- Keras initialisers ------------------------------------------------------------------------
# Keras' VarianceScaling uses fan_in = k·k·in and fan_out = k·k·out for *both* Conv2D and
# Conv2DTranspose (its kernel shape is (k, k, out, in) for the transpose and Keras reads the last
# two axes as (in, out) regardless), so the fans are computed here from the Keras view.


def _keras_fans(m: nn.Module) -> tuple[int, int]:
    w = m.weight
    if isinstance(m, nn.Linear):
        return w.shape[1], w.shape[0]
    rf = w.shape[2] * w.shape[3]
    if isinstance(m, nn.ConvTranspose2d):  # torch (in, out, kh, kw); Keras reads (kh, kw, out, in)
        return rf * w.shape[1], rf * w.shape[0]
    return rf * w.shape[1], rf * w.shape[0]


@torch.no_grad()
def glorot_uniform_(m: nn.Module) -> None:
    """Keras' default kernel initialiser."""
    fan_in, fan_out = _keras_fans(m)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    m.weight.uniform_(-limit, limit)


@torch.no_grad()
def he_normal_(m: nn.Module) -> None:
    """Keras 2.3 ``he_normal``: truncated normal (±2σ) with σ = sqrt(2 / fan_in) / 0.8796."""
    fan_in, _ = _keras_fans(m)
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)


@torch.no_grad()
def keras_init_(module: nn.Module) -> None:
    """Keras' defaults for every layer under ``module``: glorot-uniform kernels, zero biases, BN
    γ=1, β=0. Layers that the original initialises otherwise carry a ``keras_init`` attribute
    (``"he_normal"`` or a ``(mean, std)`` normal) set by the model builder."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            how = getattr(m, "keras_init", "glorot_uniform")
            if how == "he_normal":
                he_normal_(m)
            elif isinstance(how, tuple):
                m.weight.normal_(*how)
            else:
                glorot_uniform_(m)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
