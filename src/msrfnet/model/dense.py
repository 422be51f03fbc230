"""Memory-efficient convolution over a dense concatenation (the DSDF blocks' layers).

Every DSDF layer convolves the concatenation of all earlier layers of its stream. Autograd keeps
each concatenation alive for the convolution's weight gradient, so a block stores its feature
stack over and over: at 256² in bf16 the whole model kept 0.78 GiB per training image for the
backward pass, 0.38 GiB with this module (``docs/PERFORMANCE.md``). The parts themselves are kept
anyway (they are the layers' outputs), so :class:`DenseConv2d` saves the *parts* and rebuilds
the concatenation in the backward pass: one extra copy per layer, no extra convolution (unlike
activation checkpointing). This is the "shared memory" idea of memory-efficient DenseNets
(Pleiss et al. 2017) without the BN, which the DSDF layers do not have.

The forward value is the same computation as ``conv(cat(parts))``; the gradients are those of
``torch.ops.aten.convolution_backward``, which autograd would call itself.

The block's last layers feed only its residual ``x + 0.4·LeakyReLU(t)``; autograd would keep the
activation (two bytes an element in bf16) for LeakyReLU's backward, which needs only the sign of
``t``: :func:`scaled_leaky_residual` keeps that sign as one byte.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from msrfnet.model.layers import SameConv2d, exporting

__all__ = ["DenseConv2d", "scaled_leaky_residual"]


class _ConcatConv(torch.autograd.Function):
    """``conv2d(cat(parts), weight, bias, padding)`` that saves ``parts``, not the concatenation.

    The forward runs under whatever autocast is active; the backward runs outside it, so there the
    inputs are cast by hand to the dtype the forward computed in, and each gradient back to its
    tensor's own dtype, as the casts that autocast inserts would do.
    """

    @staticmethod
    def forward(ctx, weight, bias, padding, *parts):  # type: ignore[override]
        y = F.conv2d(torch.cat(parts, dim=1), weight, bias, padding=padding)
        ctx.padding, ctx.dtype, ctx.has_bias = padding, y.dtype, bias is not None
        ctx.save_for_backward(weight, *parts)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        weight, *parts = ctx.saved_tensors
        dtype = ctx.dtype
        need_bias = ctx.has_bias and ctx.needs_input_grad[1]
        mask = [any(ctx.needs_input_grad[3:]), ctx.needs_input_grad[0], need_bias]
        x = torch.cat(parts, dim=1).to(dtype)
        p = ctx.padding
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.to(dtype),
            x,
            weight.to(dtype),
            [weight.shape[0]] if ctx.has_bias else None,
            [1, 1],
            [p, p],
            [1, 1],
            False,
            [0, 0],
            1,
            mask,
        )
        del x
        grads_parts: list[torch.Tensor | None] = [None] * len(parts)
        if gx is not None:
            start = 0
            for i, part in enumerate(parts):
                c = part.shape[1]
                if ctx.needs_input_grad[3 + i]:
                    grads_parts[i] = gx[:, start : start + c].to(part.dtype)
                start += c
        gw = None if gw is None else gw.to(weight.dtype)
        gb = None if gb is None else gb.to(weight.dtype)  # bias and weight share a dtype
        return (gw, gb, None, *grads_parts)


class DenseConv2d(SameConv2d):
    """A stride-1 ``SameConv2d`` applied to a list of tensors as if concatenated on channels.

    The same parameters and ``state_dict`` as ``SameConv2d``. With ``memory_efficient`` (chosen
    at construction, ``MSRFNet(memory_efficient=...)``), while autograd records (training) the
    concatenation is not kept for the backward pass (see the module docstring); otherwise
    (inference, export, or ``memory_efficient=False``) it is the plain ``conv(cat(parts))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        memory_efficient: bool = True,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=1, bias=bias)
        assert self._pad is None  # odd kernel, stride 1: symmetric padding inside the conv
        self.memory_efficient = memory_efficient

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        if not (self.memory_efficient and _recording(self.weight, *parts)):
            return super().forward(torch.cat(list(parts), dim=1))
        return _ConcatConv.apply(self.weight, self.bias, self.padding[0], *parts)


def _recording(*tensors: torch.Tensor) -> bool:
    """Autograd records an op on ``tensors`` and no exporter is recording the graph
    (``model/layers.py``, "graph capture")."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and not exporting()


class _ScaledLeakyResidual(torch.autograd.Function):
    """``x + scale · leaky_relu(t, slope)`` keeping only ``t > 0`` (bool) for the backward."""

    @staticmethod
    def forward(ctx, x, t, slope, scale):  # type: ignore[override]
        ctx.save_for_backward(t > 0)
        ctx.slope, ctx.scale, ctx.dtypes = slope, scale, (x.dtype, t.dtype)
        return x + scale * F.leaky_relu(t, slope)  # the same ops, in the same order, as unfused

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (positive,) = ctx.saved_tensors
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = grad.to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            # as autograd: the sum's backward casts to the term's dtype, then d(scale·a), then
            # LeakyReLU's backward (the same roundings in bf16)
            g = grad.to(ctx.dtypes[1]) * ctx.scale
            gt = torch.where(positive, g, g * ctx.slope)
        return gx, gt, None, None


def scaled_leaky_residual(
    x: torch.Tensor, t: torch.Tensor, slope: float, scale: float, memory_efficient: bool = True
) -> torch.Tensor:
    """``x + scale · LeakyReLU(t)``; while autograd records (and ``memory_efficient``), only the
    sign of ``t`` is kept for the backward pass, not the activation."""
    if memory_efficient and _recording(x, t):
        return _ScaledLeakyResidual.apply(x, t, slope, scale)
    return x + scale * F.leaky_relu(t, slope)
