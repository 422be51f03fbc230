"""Memory-efficient convolution over a dense concatenation (the DSDF blocks' layers).

Every DSDF layer convolves the concatenation of all earlier layers of its stream. Autograd keeps
each concatenation alive for the convolution's weight gradient, so a block stores its feature
stack over and over: at 256² in bf16 the whole model kept 0.78 GiB per training image for the
backward pass, 0.40 GiB with this (``docs/PERFORMANCE.md``). The parts themselves are kept anyway (they are the layers' outputs), so
:class:`DenseConv2d` saves the *parts* and rebuilds the concatenation in the backward pass: one
extra copy per layer, no extra convolution (unlike activation checkpointing). This is the
"shared memory" idea of memory-efficient DenseNets (Pleiss et al. 2017) without the BN, which the
DSDF layers do not have.

The forward value is the same computation as ``conv(cat(parts))``; the gradients are those of
``torch.ops.aten.convolution_backward``, which autograd would call itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .layers import SameConv2d


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
            grad.to(dtype), x, weight.to(dtype), [weight.shape[0]] if ctx.has_bias else None,
            [1, 1], [p, p], [1, 1], False, [0, 0], 1, mask,
        )
        del x
        grads_parts: list[torch.Tensor | None] = [None] * len(parts)
        if gx is not None:
            start = 0
            for i, part in enumerate(parts):
                c = part.shape[1]
                if ctx.needs_input_grad[3 + i]:
                    grads_parts[i] = gx[:, start:start + c].to(part.dtype)
                start += c
        gw = None if gw is None else gw.to(weight.dtype)
        gb = None if gb is None else gb.to(weight.dtype)  # bias and weight share a dtype
        return (gw, gb, None, *grads_parts)


class DenseConv2d(SameConv2d):
    """A stride-1 ``SameConv2d`` applied to a list of tensors as if concatenated on channels.

    The same parameters and ``state_dict`` as ``SameConv2d``. When autograd records (training),
    the concatenation is not kept for the backward pass (see the module docstring); otherwise
    (inference, tracing for export), or with ``memory_efficient = False``, it is the plain
    ``conv(cat(parts))``.
    """

    memory_efficient = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=1, bias=bias)
        assert self._pad is None  # odd kernel, stride 1: symmetric padding inside the conv

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        records = torch.is_grad_enabled() and (
            self.weight.requires_grad or any(p.requires_grad for p in parts)
        )
        if not (records and self.memory_efficient) or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            return super().forward(torch.cat(list(parts), dim=1))
        return _ConcatConv.apply(self.weight, self.bias, self.padding[0], *parts)


def set_memory_efficient(model: torch.nn.Module, enabled: bool) -> int:
    """Switch every :class:`DenseConv2d` under ``model`` between the memory-efficient backward and
    the plain ``conv(cat(parts))`` (the benchmark's baseline, and the tests' reference); returns
    how many layers were set. The forward value is the same either way."""
    layers = [m for m in model.modules() if isinstance(m, DenseConv2d)]
    for m in layers:
        m.memory_efficient = enabled
    return len(layers)
