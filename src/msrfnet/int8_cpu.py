"""int8 MSRF-Net for the CPU through PyTorch: torchao PT2E quantization, compiled by inductor.

:func:`quantize_model` + :func:`compile_int8`: the model's convolutions as oneDNN int8 kernels
(VNNI), everything between them as inductor-generated C++ loops. Measured on a 2-core Zen4 (batch
1, 2 threads): 0.40–0.43 s per 256² image against 0.57–0.61 s for the bfloat16 eager path, after
1.5–3 min of calibration and compilation per process (``python tools/cpu_int8_inductor.py``; numbers in
docs/PERFORMANCE.md). That start-up cost is why ``msrf predict``/``msrf test`` do not use it.

What it takes to get there, each found by measuring:

* **strict export** (``torch.export.export(strict=True)``): the quantizer finds convolutions by
  their source function; the non-strict trace records none for ``SameConv2d``, and 198 of 223
  convs stayed float32;
* **dense concatenations in int8** (:func:`int8_quantizer`): by default a ``cat`` is quantized only
  when every input comes from a quantized op, which the DSDF blocks never satisfy (their block input
  is a residual sum), so each dense layer's input was re-built in float32 and then quantized —
  0.62 s/img, no faster than bfloat16. Annotating every ``cat`` with one scale shared by its inputs
  makes them uint8 copies: 0.40–0.43 s/img;
* **exact BatchNorm removal before quantization** (:func:`fold_batch_norms`): torchao folds a BN into
  the conv before it even when that conv's output has other users; D2/D3's merge conv feeds both
  ``res_bn1`` and the residual sum, so the folded graph computed a different function (kdsb DSC
  −0.02 on 17 test images). Here a BN is folded into a conv only when the conv has no other user,
  and becomes an explicit per-channel affine otherwise; the float graph is unchanged (≤ 1e-5).

Quantization: int8 per-channel weights, uint8 per-tensor activations, MinMax calibration on
training images (the histogram observer of torchao's default recipe loses more: 0.9216 vs 0.9223
on 17 kdsb test images, fp32 0.9223). Needs ``torchao`` (``pip install 'msrfnet[int8]'``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import MSRFError


def _require_torchao():
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise MSRFError("int8 CPU compilation needs torchao: pip install 'msrfnet[int8]' (or pip install torchao)") from e
    return xiq, prepare_pt2e, convert_pt2e


class _FinalLogits(nn.Module):
    """The final mask's logits only: the other heads' outputs are dead code the compiler drops."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, canny: torch.Tensor) -> torch.Tensor:
        return self.model(image, canny).final


# --- graph rewrites -----------------------------------------------------------------------------


def fold_batch_norms(gm: torch.fx.GraphModule, *example: torch.Tensor) -> int:
    """Remove every eval-mode ``batch_norm`` from an exported graph, exactly; returns how many.

    Into the weights of the conv before it when that conv has no other user; otherwise as
    ``x·scale + shift`` with constant per-channel tensors (see the module docstring for why).
    ``example`` re-runs the graph to give new nodes the shape metadata the quantizer reads.
    """
    graph, count = gm.graph, 0
    state = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}

    def const(node):
        return None if node is None else state[node.target].detach().double()

    def attr(name: str, value: torch.Tensor, before):
        gm.register_buffer(name, value.float())
        with graph.inserting_before(before):
            return graph.get_attr(name)

    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target != torch.ops.aten.batch_norm.default:
            continue
        x, w, b, mean, var, training, _momentum, eps = bn.args[:8]
        if training:
            raise MSRFError("fold_batch_norms: the model must be in eval mode")
        scale = torch.rsqrt(const(var) + eps) * (const(w) if w is not None else 1.0)
        shift = (const(b) if b is not None else 0.0) - const(mean) * scale
        count += 1
        conv_alone = x.op == "call_function" and x.target == torch.ops.aten.conv2d.default and len(x.users) == 1
        if conv_alone:
            args = list(x.args) + [None] * max(0, 3 - len(x.args))
            bias = const(args[2]) if args[2] is not None else 0.0
            args[1] = attr(f"_bnfold{count}_weight", const(args[1]) * scale.view(-1, 1, 1, 1), x)
            args[2] = attr(f"_bnfold{count}_bias", bias * scale + shift, x)
            x.args = tuple(args)
            bn.replace_all_uses_with(x)
        else:
            s = attr(f"_bnfold{count}_scale", scale.view(1, -1, 1, 1), bn)
            t = attr(f"_bnfold{count}_shift", shift.view(1, -1, 1, 1), bn)
            with graph.inserting_before(bn):
                y = graph.call_function(torch.ops.aten.add.Tensor, (graph.call_function(torch.ops.aten.mul.Tensor, (x, s)), t))
            bn.replace_all_uses_with(y)
        graph.erase_node(bn)
    graph.eliminate_dead_code()
    gm.recompile()

    class _Meta(torch.fx.Interpreter):  # the new nodes' "val" (shape/dtype), as export would set
        def run_node(self, n):
            out = super().run_node(n)
            if "val" not in n.meta and isinstance(out, torch.Tensor):
                n.meta["val"] = out
            return out

    with torch.no_grad():
        _Meta(gm).run(*example)
    return count


def int8_quantizer():
    """torchao's x86 recipe with MinMax activations, and every ``cat`` quantized (shared scale)."""
    xiq, _, _ = _require_torchao()
    from torchao.quantization.pt2e import MinMaxObserver

    class Int8Quantizer(xiq.X86InductorQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op == "call_function" and node.target == torch.ops.aten.cat.default and not xiq._is_any_annotated([node]):
                    self._annotate_cat(node, self.global_config)
            return super().annotate(model)

    config = xiq.get_default_x86_inductor_quantization_config()
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver)
    return Int8Quantizer().set_global(dataclasses.replace(config, input_activation=act))


def quantize_model(model: nn.Module, feeds: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.fx.GraphModule:
    """The quantized (reference, not yet compiled) graph of ``model``'s final logits for inputs of
    the shape of ``feeds`` (image, canny), calibrated on them."""
    import copy

    from .quantize import use_export_subpixel

    _, prepare_pt2e, convert_pt2e = _require_torchao()
    net = copy.deepcopy(model).cpu().float().eval().requires_grad_(False)
    use_export_subpixel(net)  # plain convs instead of transposed ones: all int8
    wrapped = _FinalLogits(net).eval()
    with torch.no_grad():
        gm = torch.export.export(wrapped, tuple(feeds[0]), strict=True).module()
        fold_batch_norms(gm, *feeds[0])
        prepared = prepare_pt2e(gm, int8_quantizer())
        for image, canny in feeds:
            prepared(image, canny)
        return convert_pt2e(prepared)


def compile_int8(quantized: torch.fx.GraphModule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``torch.compile`` of a :func:`quantize_model` graph with frozen weights, the setting under
    which inductor lowers it to oneDNN int8 convolutions (without freezing they stay float32).
    The compile runs on the first call (~2 min on 2 cores); later calls take the input shape it saw.

    Ahead-of-time packaging (AOTInductor) of the same graph was tried and is not offered: for some
    calibrations its package disagreed with the quantized graph on whole images (mask agreement
    0.61–0.97 on kdsb test images, against ≥ 0.997 for this JIT compile of the same graph).
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(quantized)

    def run(image: torch.Tensor, canny: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(image, canny)

    return run
