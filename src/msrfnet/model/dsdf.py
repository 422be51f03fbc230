"""The DSDF block (dual-scale dense fusion, paper Fig. 2a) and the MSRF sub-network (Fig. 2b).

A DSDF block runs two dense streams, one per scale, that exchange features after every layer: a
3×3 stride-2 conv ``D`` takes high-resolution features down, a 3×3 stride-2 transposed conv ``U``
takes low-resolution features up. Five conv + LeakyReLU(0.25) layers per stream, growth ``g``, no
BatchNorm; the block returns ``X_h + 0.4·M_5,h`` and ``X_l + 0.4·M_5,l``.

``variant="official"`` reproduces the official ``RDDB`` layer graph exactly, with its departures
from Fig. 2a: the first low-resolution layer is LeakyReLU(X_l) with its conv discarded (issue #15),
the first exchange takes the block inputs (#14) and the second takes layer 1 (#16–#18).
``variant="clean"`` wires the block as drawn: ``l1 = C_g(X_l)`` and every exchange takes the latest
layer of the other stream. Both keep the block input in every layer's dense concatenation (#19):
the figure is ambiguous there and the residual dense blocks that DSDF builds on (ESRGAN's RRDB)
concatenate it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msrfnet.config import VARIANTS
from msrfnet.model.dense import DenseConv2d, scaled_leaky_residual
from msrfnet.model.layers import SameConv2d, capturing
from msrfnet.model.upsampling import up_conv
from msrfnet.options import check, choice

__all__ = ["DSDFBlock", "MSRFSubnetwork", "MSRF_SCHEDULE"]

SLOPE = 0.25  # LeakyReLU slope of the official code
RESIDUAL_SCALE = 0.4  # the paper's scaling weight w

#: Which layer of each stream feeds exchange i (0 = the block input, k = the k-th layer output).
_EXCHANGE_SOURCES = {"official": (0, 1, 3, 4), "clean": (1, 2, 3, 4)}

#: The chained block order of Fig. 2b: (high scale, low scale) of blocks 1..10, scales 0-based.
MSRF_SCHEDULE = ((0, 1), (2, 3), (0, 1), (2, 3), (1, 2), (0, 1), (2, 3), (1, 2), (0, 1), (2, 3))


class DSDFBlock(nn.Module):
    """One DSDF block on a (high, low) scale pair with ``c_l = 2·c_h`` and growth ``g = c_h / 2``.

    Official-code names: ``high[i]`` = ``x{i+1}``, ``low[i]`` = ``y{i+1}``, ``down[i]`` =
    ``x{i+1}c``, ``up[i]`` = ``y{i+1}t``. ``low[0]`` exists only in the clean variant.

    Implementation options, the same function either way: ``memory_efficient`` (the dense layers
    and the residual keep less for the backward pass, ``model/dense.py``) and ``upsampling``
    (the form of ``up``, ``model/upsampling.py``).
    """

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        growth: int,
        variant: str = "official",
        *,
        memory_efficient: bool = True,
        upsampling: str = "transposed",
    ):
        super().__init__()
        check(choice(VARIANTS), variant, "variant")
        ch, cl, g = high_channels, low_channels, growth
        self.variant, self.memory_efficient = variant, memory_efficient
        dense = lambda cin, cout: DenseConv2d(cin, cout, 3, memory_efficient=memory_efficient)  # noqa: E731
        self.sources = _EXCHANGE_SOURCES[variant]
        official = variant == "official"
        l1 = cl if official else g  # width of the first low-resolution layer's output

        self.high = nn.ModuleList(
            [SameConv2d(ch, g, 3)]
            + [dense(ch + i * g + g, ch if i == 4 else g) for i in range(1, 5)]
        )
        low = [nn.Identity() if official else SameConv2d(cl, g, 3)]
        low += [dense(cl + l1 + (i - 1) * g + g, cl if i == 4 else g) for i in range(1, 5)]
        self.low = nn.ModuleList(low)

        def width(stream_first: int, block_in: int, src: int) -> int:
            return block_in if src == 0 else (stream_first if src == 1 else g)

        self.down = nn.ModuleList(
            [SameConv2d(width(g, ch, s), g, 3, stride=2) for s in self.sources]
        )
        self.up = nn.ModuleList([up_conv(width(l1, cl, s), g, 3, upsampling) for s in self.sources])

    def forward(
        self, x_high: torch.Tensor, x_low: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        act = lambda t: F.leaky_relu(t, SLOPE)  # noqa: E731
        # in place on a fresh conv output: LeakyReLU (slope > 0) backpropagates from its result,
        # so the pre-activation is not kept as well (half the memory of each layer)
        act_ = lambda t: F.leaky_relu(t, SLOPE, inplace=True)  # noqa: E731
        # U's output can be a view: in place only when no graph is captured (model/layers.py)
        act_u = act if capturing() else act_
        hs = [x_high, act_(self.high[0](x_high))]
        # official: LeakyReLU of the block input itself (#15), not in place
        ls = [
            x_low,
            act(x_low) if isinstance(self.low[0], nn.Identity) else act_(self.low[0](x_low)),
        ]
        for i in range(1, 5):
            s = self.sources[i - 1]
            d = act_(self.down[i - 1](hs[s]))
            u = act_u(self.up[i - 1](ls[s]))
            # DenseConv2d: the concatenation is not stored for the backward pass (model/dense.py)
            m_h, m_l = self.high[i](hs + [u]), self.low[i](ls + [d])
            if i < 4:
                hs.append(act_(m_h))
                ls.append(act_(m_l))
        # the fifth layers (m_h, m_l before LeakyReLU) feed only the residual X + 0.4·LReLU(M5)
        efficient = self.memory_efficient
        out_h = scaled_leaky_residual(x_high, m_h, SLOPE, RESIDUAL_SCALE, efficient)
        out_l = scaled_leaky_residual(x_low, m_l, SLOPE, RESIDUAL_SCALE, efficient)
        return out_h, out_l


class MSRFSubnetwork(nn.Module):
    """Ten DSDF blocks in the chained order of Fig. 2b, then the global residual
    ``Y_s = E_s + 0.4·X_s`` (the official HEAD wires blocks 9/10 wrongly, #27; the paper's order
    is used, as in every earlier version of the code)."""

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        variant: str = "official",
        *,
        memory_efficient: bool = True,
        upsampling: str = "transposed",
    ):
        super().__init__()
        self.schedule = MSRF_SCHEDULE
        options = dict(memory_efficient=memory_efficient, upsampling=upsampling)
        self.blocks = nn.ModuleList(
            [
                DSDFBlock(channels[h], channels[l_], channels[h] // 2, variant, **options)
                for h, l_ in self.schedule
            ]
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = list(feats)
        for block, (h, l_) in zip(self.blocks, self.schedule):
            x[h], x[l_] = block(x[h], x[l_])
        return [e + RESIDUAL_SCALE * m for e, m in zip(feats, x)]
