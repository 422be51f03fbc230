"""Decoder D2–D4 of MSRF-Net (paper Fig. 2, panel b; official ``model.py``).

D2 and D3 (the official code's decoders A and B) are "triple attention" blocks: an Attention-U-Net
gate on the skip connection, a plain up path, and a dual (channel + spatial) attention path, merged
by a 1×1 conv and a pre-activation residual unit. D4 (decoder C) has no attention: it upsamples,
fuses with Y1, and takes the shape stream's fused edge map before the final head.

Kept from the official code although they depart from the figure (spec §1.6, §5.2): the gate map is
upsampled by a learned 2×2 transposed conv with no sigmoid after it; the up path is a 1×1 stride-2
transposed conv, so three of four positions hold only the bias (#23); the residual unit is
pre-activation with no activation after the add.
"""

from __future__ import annotations

import torch
from torch import nn

from msrfnet.model.layers import SameConv2d, SqueezeExcite, keras_bn
from msrfnet.model.upsampling import up_conv

__all__ = ["AttentionGate", "DualAttention", "DecoderBlock", "FinalDecoder"]


class AttentionGate(nn.Module):
    """Official ``Attention_B``: ``BN(skip · up2(σ(ψ(ReLU(θ(skip) + φ(prev))))))``, BN eps 1e-5."""

    def __init__(self, channels: int, prev_channels: int):
        super().__init__()
        self.theta = SameConv2d(channels, channels, 2, stride=2)
        self.phi = nn.Conv2d(prev_channels, channels, 1)
        self.psi = nn.Conv2d(channels, 1, 1)
        self.psi.keras_init = (0.0, 0.02)  # RandomNormal(0, 0.02) in the original
        self.up = nn.ConvTranspose2d(1, 1, 2, stride=2)
        self.bn = keras_bn(channels, eps=1e-5)

    def forward(self, skip: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        psi = torch.sigmoid(self.psi(torch.relu(self.theta(skip) + self.phi(prev))))
        return self.bn(skip * self.up(psi))


class DualAttention(nn.Module):
    """Official ``dual_att_blocks``: channel (SE) and spatial attention on the fused features,
    combined as ``(1 + spatial) · channel``."""

    def __init__(self, channels: int, prev_channels: int, upsampling: str = "transposed"):
        super().__init__()
        self.up = up_conv(prev_channels, channels, 4, upsampling)
        self.up_bn = keras_bn(channels)
        self.conv = SameConv2d(2 * channels, channels, 3)
        self.bn = keras_bn(channels)
        self.se = SqueezeExcite(channels)
        self.sa_conv1 = nn.Conv2d(channels, channels // 4, 1)
        self.sa_bn = keras_bn(channels // 4)
        self.sa_conv2 = nn.Conv2d(channels // 4, 1, 1)

    def forward(self, skip: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        v = torch.relu(self.up_bn(self.up(prev)))
        t = torch.relu(self.bn(self.conv(torch.cat([skip, v], dim=1))))
        sa = torch.sigmoid(self.sa_conv2(torch.relu(self.sa_bn(self.sa_conv1(t)))))
        return (1 + sa) * self.se(t)


class DecoderBlock(nn.Module):
    """D2 / D3: ``m = conv1×1([up(prev), gate(skip), dual(skip, prev)])``, then
    ``m + conv(ReLU(BN(conv(ReLU(BN(m))))))``. Output at the skip's resolution, ``channels`` wide.
    ``upsampling``: the form of the up-convolutions (``model/upsampling.py``)."""

    def __init__(self, channels: int, prev_channels: int, upsampling: str = "transposed"):
        super().__init__()
        self.attention = AttentionGate(channels, prev_channels)
        self.up = up_conv(prev_channels, channels, 1, upsampling)
        self.dual = DualAttention(channels, prev_channels, upsampling)
        self.merge = nn.Conv2d(3 * channels, channels, 1)
        self.res_bn1 = keras_bn(channels)
        self.res_conv1 = SameConv2d(channels, channels, 3)
        self.res_bn2 = keras_bn(channels)
        self.res_conv2 = SameConv2d(channels, channels, 3)

    def forward(self, skip: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        m = self.merge(
            torch.cat([self.up(prev), self.attention(skip, prev), self.dual(skip, prev)], dim=1)
        )
        r = self.res_conv1(torch.relu(self.res_bn1(m)))
        return m + self.res_conv2(torch.relu(self.res_bn2(r)))


class FinalDecoder(nn.Module):
    """D4 (official decoder C): ``i = ReLU(conv1×1([up4×4(prev), Y1]))``,
    ``r = BN(ReLU(conv3×3(i))) + i``, ``f = ReLU(conv3×3([r, edge]))``."""

    def __init__(self, channels: int = 32, prev_channels: int = 64, upsampling: str = "transposed"):
        super().__init__()
        self.up = up_conv(prev_channels, channels, 4, upsampling)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        self.conv = SameConv2d(channels, channels, 3)
        self.bn = keras_bn(channels)
        self.conv_edge = SameConv2d(channels + 1, channels, 3)
        for m in (self.fuse, self.conv, self.conv_edge):
            m.keras_init = "he_normal"

    def forward(self, prev: torch.Tensor, y1: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        i = torch.relu(self.fuse(torch.cat([self.up(prev), y1], dim=1)))
        r = self.bn(torch.relu(self.conv(i))) + i
        return torch.relu(self.conv_edge(torch.cat([r, edge], dim=1)))
