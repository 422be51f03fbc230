"""Gated shape stream and image-gradient fusion (paper Fig. 2 "Shape stream"; official model.py).

Follows Gated-SCNN (Takikawa et al., ICCV 2019) as the official code implements it, which departs
from the figure and from Gated-SCNN in ways that change the function (spec §1.5, kept here):

- it reads Y2, Y3 and Y4 (not Y1, issue #22) and has two gated convolutions, not three;
- a gated conv returns only its one-channel gate α (Gated-SCNN returns conv((α + 1)·s));
- the residual blocks apply one conv + BN to their input and add the input (the official code
  builds a first conv whose output it discards), broadcasting a 1-channel α over 16 or 8 channels;
- every upsampling is Keras 2.3.1 bilinear (:func:`legacy_bilinear_upsample`).

The boundary logits ``edge_out`` are supervised by Canny edges of the mask; the fused map
``ReLU(BN(conv(σ(conv([σ(edge_out), canny])))))`` joins the last decoder stage.
"""

from __future__ import annotations

import torch
from torch import nn

from msrfnet.model.layers import SameConv2d, keras_bn, legacy_bilinear_upsample

__all__ = ["GatedConv", "ShapeResBlock", "EdgeFusion", "ShapeStream"]


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


class GatedConv(nn.Module):
    """Official ``gsc``: ``α = σ(BN(conv1×1(ReLU(conv1×1(BN([s, c]))))))`` with hidden width 2·C + 1
    (the code passes ``in_channels = 2·C`` and uses ``in_channels + 1``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn_in = keras_bn(channels + 1)
        self.conv_hidden = _conv1x1(channels + 1, 2 * channels + 1)
        self.conv_gate = _conv1x1(2 * channels + 1, 1)
        self.bn_gate = keras_bn(1)

    def forward(self, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv_hidden(self.bn_in(torch.cat([s, c], dim=1))))
        return torch.sigmoid(self.bn_gate(self.conv_gate(h)))


class ShapeResBlock(nn.Module):
    """Official ``resblock`` as it is live: ``ReLU(BN(conv3×3(x)) + x)``; x may have 1 channel."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, 3)
        self.bn = keras_bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)) + x)


class EdgeFusion(nn.Module):
    """The "image gradients" box: fuses the boundary probability with the Canny map of the image."""

    def __init__(self):
        super().__init__()
        self.cw_conv = _conv1x1(2, 1)
        self.edge_conv = _conv1x1(1, 1)
        self.edge_bn = keras_bn(1)

    def forward(self, edge_prob: torch.Tensor, canny: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.cw_conv(torch.cat([edge_prob, canny], dim=1)))
        return torch.relu(self.edge_bn(self.edge_conv(w)))


class ShapeStream(nn.Module):
    """Y2, Y3, Y4 (+ the image's Canny map) → (boundary logits, fused edge feature), full size."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        _, c2, c3, c4 = channels
        self.d0_conv = _conv1x1(c2, 32)
        self.res1 = ShapeResBlock(32, 32)
        self.conv16 = _conv1x1(32, 16)
        self.c3_conv = _conv1x1(c3, 1)
        self.gate1 = GatedConv(16)
        self.res2 = ShapeResBlock(1, 16)
        self.conv8 = _conv1x1(16, 8)
        self.c4_conv = _conv1x1(c4, 1)
        self.gate2 = GatedConv(8)
        self.res3 = ShapeResBlock(1, 8)
        self.conv4 = _conv1x1(8, 4)
        self.edge_head = _conv1x1(4, 1)
        self.fusion = EdgeFusion()

    def forward(
        self, y2: torch.Tensor, y3: torch.Tensor, y4: torch.Tensor, canny: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.res1(legacy_bilinear_upsample(self.d0_conv(y2), 2))
        alpha1 = self.gate1(self.conv16(s), legacy_bilinear_upsample(self.c3_conv(y3), 4))
        s = self.res2(alpha1)
        alpha2 = self.gate2(self.conv8(s), legacy_bilinear_upsample(self.c4_conv(y4), 8))
        s = self.res3(alpha2)
        edge_logit = self.edge_head(self.conv4(s))
        return edge_logit, self.fusion(torch.sigmoid(edge_logit), canny)
