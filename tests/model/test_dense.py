"""The memory-efficient dense convolution of the DSDF blocks (model/dense.py): the same values and
gradients as ``conv(cat(parts))``, and less memory kept for the backward pass; chosen at
construction (``memory_efficient``)."""

from __future__ import annotations

import pytest
import torch

from msrfnet.model import DenseConv2d, DSDFBlock, MSRFNet
from msrfnet.model.layers import SameConv2d


def _saved_bytes(fn) -> int:
    """Bytes of distinct non-parameter storages autograd saves while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


def _params_ptrs(module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def _grads(module, inputs, outputs):
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs)
    return torch.autograd.grad(
        loss, list(inputs) + [p for p in module.parameters()], allow_unused=True
    )


@pytest.mark.parametrize("dtypes", ["fp32", "mixed-autocast"])
def test_dense_conv_equals_conv_of_concatenation(dtypes):
    torch.manual_seed(0)
    conv = DenseConv2d(10, 4, 3)
    plain = DenseConv2d(10, 4, 3, memory_efficient=False)
    plain.load_state_dict(conv.state_dict())
    bf16 = dtypes != "fp32"
    shapes = [(2, 3, 8, 6), (2, 5, 8, 6), (2, 2, 8, 6)]
    parts = [torch.randn(s, requires_grad=True) for s in shapes]
    if bf16:  # a float32 block input beside bfloat16 layer outputs, as under autocast
        parts = [parts[0]] + [p.detach().bfloat16().requires_grad_() for p in parts[1:]]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def run(layer):
        with ctx:
            y = layer(parts)
        return y, _grads(layer, parts, [y])

    y_ref, g_ref = run(plain)
    y, g = run(conv)
    assert y.dtype == y_ref.dtype == (torch.bfloat16 if bf16 else torch.float32)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b, p in zip(g, g_ref, parts + list(conv.parameters())):
        assert a.dtype == b.dtype == p.dtype
        torch.testing.assert_close(
            a, b, rtol=1e-5 if not bf16 else 1e-2, atol=1e-5 if not bf16 else 1e-2
        )


@pytest.mark.parametrize("variant", ["official", "clean"])
@pytest.mark.parametrize("subpixel", [False, True])
def test_dsdf_block_gradients_and_memory(variant, subpixel):
    torch.manual_seed(1)
    upsampling = "subpixel" if subpixel else "transposed"
    block = DSDFBlock(8, 16, 4, variant, upsampling=upsampling).double()
    reference = DSDFBlock(8, 16, 4, variant, memory_efficient=False, upsampling=upsampling)
    reference = reference.double()
    reference.load_state_dict(block.state_dict())
    dense = lambda b: [m.memory_efficient for m in b.modules() if isinstance(m, DenseConv2d)]  # noqa: E731
    assert dense(block) == [True] * 8 and dense(reference) == [False] * 8
    xh = torch.randn(2, 8, 16, 16, dtype=torch.float64, requires_grad=True)
    xl = torch.randn(2, 16, 8, 8, dtype=torch.float64, requires_grad=True)

    (out_ref, saved_ref) = _saved_bytes(lambda: reference(xh, xl))
    (out, saved) = _saved_bytes(lambda: block(xh, xl))
    for a, b in zip(out, out_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(_grads(block, (xh, xl), out), _grads(reference, (xh, xl), out_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # activations only: the block's own parameters are not memory the backward adds
    act = sum(v for k, v in saved.items() if k not in _params_ptrs(block))
    act_ref = sum(v for k, v in saved_ref.items() if k not in _params_ptrs(reference))
    assert act < 0.55 * act_ref, (act, act_ref)


def test_whole_model_training_step_same_gradients():
    torch.manual_seed(2)
    model = MSRFNet().train()
    reference = model.rebuild(memory_efficient=False)
    assert reference.training and not reference.msrf.blocks[0].memory_efficient
    image, canny = torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) < 0.2).float()
    torch.manual_seed(3)  # the encoder's dropout draws the same masks in both runs
    g = _grads(model, (), model(image, canny))
    torch.manual_seed(3)
    g_ref = _grads(reference, (), reference(image, canny))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_no_autograd_record_is_plain_conv():
    conv = DenseConv2d(6, 2, 3)
    parts = [torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)]
    with torch.no_grad():
        y = conv(parts)
    assert y.grad_fn is None
    torch.testing.assert_close(y, SameConv2d.forward(conv, torch.cat(parts, 1)))
    # the same parameters as the SameConv2d it replaces: Keras import and checkpoints are unchanged
    assert set(conv.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize(
    "dtypes", [(torch.float64, torch.float64), (torch.float32, torch.bfloat16)]
)
def test_scaled_leaky_residual_keeps_only_the_sign(dtypes):
    from msrfnet.model.dense import scaled_leaky_residual

    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 5, dtype=dtypes[0], requires_grad=True)
    t = torch.randn(2, 3, 5, 5, dtype=dtypes[1])
    t[0, 0, 0, :3] = 0  # LeakyReLU's backward takes the negative slope at exactly 0
    t.requires_grad_()
    y_ref = scaled_leaky_residual(x, t, 0.25, 0.4, memory_efficient=False)
    (y, saved) = _saved_bytes(lambda: scaled_leaky_residual(x, t, 0.25, 0.4))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (x, t), g), torch.autograd.grad(y_ref, (x, t), g)):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sum(saved.values()) == t.numel()  # one bool per element, nothing else
