"""Encoder E1–E4 of MSRF-Net (paper Fig. 2, left column; official ``model.py``).

Each stage is conv3×3 → ReLU → conv3×3 → ReLU → BN (ReLU *before* BN, as the official code), with
squeeze-and-excitation on E1–E3; stages are joined by 2×2 max-pooling and element-wise dropout 0.2
(the figure's dashed arrows). The official code also builds a residual branch and a side head per
stage (``n12``, ``pred1``, …) that never reach an output (issue #11): they are not built here.
"""

from __future__ import annotations

import torch
from torch import nn

from msrfnet.model.layers import SameConv2d, SqueezeExcite, keras_bn

__all__ = ["ENCODER_CHANNELS", "EncoderStage", "Encoder"]

ENCODER_CHANNELS = (32, 64, 128, 256)


class EncoderStage(nn.Module):
    """One encoder stage E_s: ``SE(BN(ReLU(conv(ReLU(conv(x))))))``; E4 has no SE."""

    def __init__(self, in_channels: int, out_channels: int, se: bool = True):
        super().__init__()
        self.conv1 = SameConv2d(in_channels, out_channels, 3)
        self.conv2 = SameConv2d(out_channels, out_channels, 3)
        self.conv1.keras_init = self.conv2.keras_init = "he_normal"
        self.bn = keras_bn(out_channels)
        self.se = SqueezeExcite(out_channels) if se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.se(self.bn(x))


class Encoder(nn.Module):
    """E1–E4: returns the four feature maps at 1, 1/2, 1/4 and 1/8 of the input size."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = ENCODER_CHANNELS,
        dropout: float = 0.2,
    ):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.e1 = EncoderStage(in_channels, c1)
        self.e2 = EncoderStage(c1, c2)
        self.e3 = EncoderStage(c2, c3)
        self.e4 = EncoderStage(c3, c4, se=False)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout)  # element-wise, as Keras Dropout (not Dropout2d)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e1 = self.e1(x)
        e2 = self.e2(self.drop(self.pool(e1)))
        e3 = self.e3(self.drop(self.pool(e2)))
        e4 = self.e4(self.drop(self.pool(e3)))
        return [e1, e2, e3, e4]
