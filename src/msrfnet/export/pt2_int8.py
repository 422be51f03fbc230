"""int8 MSRF-Net for the CPU through PyTorch: torchao PT2E quantization, compiled by inductor.

:func:`quantize_model` + :func:`compile_int8`: the model's convolutions as oneDNN int8 kernels
(VNNI), everything between them as inductor-generated C++ loops; faster than the bfloat16 path at
float32's DSC (docs/PERFORMANCE.md). Calibration and compilation take minutes, so
:func:`export_int8_pt2` (``msrf export --int8 --out model.pt2``) does them once: an AOTInductor
package that :class:`~msrfnet.accel.pt2_runner.Pt2Runner` (``msrf predict/test --pt2 model.pt2``)
loads in seconds.

What a fast and exact int8 graph needs (why each one matters: docs/PERFORMANCE.md):

* **strict export** (``torch.export.export(strict=True)``): the quantizer finds convolutions by
  their source function, which the non-strict trace does not record for ``SameConv2d``;
* **dense concatenations in int8** (:func:`int8_quantizer`): every ``cat`` is annotated with one
  scale shared by its inputs, so it is a uint8 copy (by default a ``cat`` is quantized only when
  all its inputs come from quantized ops, which a DSDF block never satisfies);
* **exact BatchNorm removal before quantization** (:func:`fold_batch_norms`): a BN is folded into
  its conv only when the conv has no other user, and becomes an explicit per-channel affine
  otherwise (torchao folds it regardless, which changes the function where a conv feeds two users,
  as D2/D3's merge conv does);
* **sub-pixel up-convolutions with a pixel shuffle for channels-last memory** (the model rebuilt
  with ``upsampling="subpixel-inductor"``): plain convs instead of transposed ones, all int8, and a
  shuffle that inductor compiles to row copies.

Quantization: int8 per-channel weights, uint8 per-tensor activations, MinMax calibration on
training images. Needs ``torchao`` (``pip install 'msrfnet[int8]'``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from msrfnet.accel.cpu import flush_denormals
from msrfnet.accel.pt2_runner import PT2_FORMAT, contiguous_nchw
from msrfnet.errors import MSRFError, first_line
from msrfnet.export.destination import check_destination, check_suffix
from msrfnet.export.onnx_int8 import (
    calibration_files,
    calibration_folders,
    calibration_inputs,
    default_calibration,
)
from msrfnet.model.loading import load_one_class_model
from msrfnet.model.msrfnet import MSRFNet
from msrfnet.model.upsampling import freeze_upsampling
from msrfnet.options import check_image_size

__all__ = [
    "fold_batch_norms",
    "int8_quantizer",
    "quantize_model",
    "compile_int8",
    "PT2_FORMAT",
    "calibration_feeds",
    "compile_package",
    "export_int8_pt2",
]

log = logging.getLogger("msrfnet")


def _require_torchao():
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise MSRFError(
            "int8 CPU compilation needs torchao: "
            "pip install 'msrfnet[int8]' (or pip install torchao)"
        ) from e
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
        conv_alone = (
            x.op == "call_function"
            and x.target == torch.ops.aten.conv2d.default
            and len(x.users) == 1
        )
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
                y = graph.call_function(
                    torch.ops.aten.add.Tensor,
                    (graph.call_function(torch.ops.aten.mul.Tensor, (x, s)), t),
                )
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
                if (
                    node.op == "call_function"
                    and node.target == torch.ops.aten.cat.default
                    and not xiq._is_any_annotated([node])
                ):
                    self._annotate_cat(node, self.global_config)
            return super().annotate(model)

    config = xiq.get_default_x86_inductor_quantization_config()
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver)
    return Int8Quantizer().set_global(dataclasses.replace(config, input_activation=act))


def quantize_model(
    model: MSRFNet,
    feeds: Sequence[tuple[torch.Tensor, torch.Tensor]],
    upsampling: str = "subpixel-inductor",
) -> torch.fx.GraphModule:
    """The quantized (reference, not yet compiled) graph of ``model``'s final logits for inputs of
    the shape of ``feeds`` (image, canny), calibrated on them; the graph is traced from a copy of
    ``model`` built with ``upsampling`` (``msrfnet.model.upsampling``)."""
    _, prepare_pt2e, convert_pt2e = _require_torchao()
    # plain convs instead of transposed ones (all int8), their weights constants of the graph
    net = model.rebuild(upsampling=upsampling).cpu().float().eval()
    net.requires_grad_(False)
    freeze_upsampling(net)
    wrapped = _FinalLogits(net).eval()
    with torch.no_grad():
        gm = torch.export.export(wrapped, tuple(feeds[0]), strict=True).module()
        fold_batch_norms(gm, *feeds[0])
        prepared = prepare_pt2e(gm, int8_quantizer())
        for image, canny in feeds:
            prepared(image, canny)
        return convert_pt2e(prepared)


def compile_int8(
    quantized: torch.fx.GraphModule,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``torch.compile`` of a :func:`quantize_model` graph with frozen weights, the setting under
    which inductor lowers it to oneDNN int8 convolutions (without freezing they stay float32).
    The compile runs on the first call (~1–2 min on 2 cores); a call with another input shape or
    memory layout compiles again.
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(quantized)

    def run(image: torch.Tensor, canny: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(image, canny)

    return run


# --- the AOTInductor package (msrf export --int8 --out X.pt2) -------------------------------------

# package vs the quantized graph it was compiled from, per image: mean |Δprobability| ≤ 0.003 and
# masks equal on ≥ 99.7 % of the pixels on kdsb test images; a miscompiled package (the strides
# of pt2_runner.contiguous_nchw) had 61–97 % on kdsb, and 56 % with mean |Δp| 0.024 on the tests'
# random model
MAX_MEAN_DIFF, MIN_AGREEMENT = 0.01, 0.9


def calibration_feeds(
    files: Sequence[Path], image_size: int, canny_low: float, canny_high: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image, canny) tensors of ``files`` for :func:`quantize_model` and an example for
    :func:`compile_package`: pre-processed as at inference, contiguous NCHW
    (:func:`~msrfnet.accel.pt2_runner.contiguous_nchw`)."""

    return [
        contiguous_nchw(f["image"], f["canny"])
        for f in calibration_inputs(files, image_size, canny_low, canny_high)
    ]


def compile_package(
    quantized: torch.fx.GraphModule,
    example: tuple[torch.Tensor, torch.Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
) -> None:
    """Compile a :func:`quantize_model` graph ahead of time for this CPU into an AOTInductor
    package at ``path`` (``.pt2``), for inputs of ``example``'s shape and strides (see
    :func:`contiguous_nchw`); load it with ``torch._inductor.aoti_load_package``."""
    with torch.no_grad():
        program = torch.export.export(quantized, tuple(example), strict=False)
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(path),
            inductor_configs={"freezing": True, "aot_inductor.metadata": metadata or {}},
        )


def _compile_verified(
    quantized: torch.fx.GraphModule,
    example: tuple[torch.Tensor, torch.Tensor],
    checks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    metadata: dict[str, str],
    tmp: str,
    *,
    name: Path,
) -> dict[str, float]:
    """:func:`compile_package` into ``tmp``, kept only if it agrees with ``quantized`` on
    ``checks`` (see ``MAX_MEAN_DIFF``, ``MIN_AGREEMENT``); returns the largest mean difference
    (``diff``) and the smallest mask agreement (``agree``). ``name`` is the file the messages
    name."""
    import shutil
    import tempfile

    worst = {"diff": 0.0, "agree": 1.0}
    with (
        tempfile.TemporaryDirectory(prefix="msrf-pt2-") as work,
        torch.no_grad(),
        flush_denormals(),
    ):
        package = str(Path(work) / "model.pt2")
        log.info("int8: compiling with AOTInductor for this CPU (minutes on a small CPU) …")
        compile_package(quantized, example, package, metadata)
        compiled = torch._inductor.aoti_load_package(package)
        for f in checks:
            p, r = torch.sigmoid(compiled(*f)), torch.sigmoid(quantized(*f))
            worst["diff"] = max(worst["diff"], float((p - r).abs().mean()))
            worst["agree"] = min(worst["agree"], float(((p >= 0.5) == (r >= 0.5)).float().mean()))
        if worst["diff"] > MAX_MEAN_DIFF or worst["agree"] < MIN_AGREEMENT:
            raise MSRFError(
                f"{name}: the compiled package disagrees with its quantized graph on "
                f"calibration images (mean |Δprobability| up to {worst['diff']:.3f}, allowed "
                f"{MAX_MEAN_DIFF}; masks equal on {worst['agree']:.1%} of the pixels, at least "
                f"{MIN_AGREEMENT:.0%} needed); not written"
            )
        shutil.move(package, tmp)
    return worst


def export_int8_pt2(
    weights: str | Path | None = None,
    out: str | Path = "msrfnet_int8.pt2",
    calibration: str | Path | Sequence[str | Path] | None = None,
    n: int = 16,
    image_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """``msrf export --int8 --out X.pt2``: quantize (:func:`quantize_model`, calibrated on ``n``
    images of ``calibration``, default the bundled sample's training images), compile ahead of time
    for this CPU (AOTInductor, batch 1, ``image_size``², default the checkpoint's) and verify the
    package against the quantized graph on other calibration images before it is kept. ``out`` is
    checked first as :func:`msrfnet.export.destination.check_destination` says (a ``.pt2``
    name; an earlier package is replaced only with ``overwrite``), before the calibration.

    Raises:
        MSRFError: no torchao, unusable weights or calibration images, or a package that fails to
            build or to verify (nothing is written then).
    """
    import time

    _require_torchao()
    out = Path(out)
    check_suffix(out, "int8-pt2")
    model, path, cfg = load_one_class_model(weights, prefer_runs=False)
    size = check_image_size(image_size or cfg.image_size)
    source = default_calibration(calibration)
    destination = check_destination(
        out, "int8-pt2", overwrite=overwrite, inputs=[path.parent, *calibration_folders(source)]
    )
    files = calibration_files(source, n)
    feeds = calibration_feeds(files, size, cfg.canny_low, cfg.canny_high)
    start = time.perf_counter()
    log.info("int8: calibrating on %d images at %d×%d …", len(files), size, size)
    with flush_denormals():
        quantized = quantize_model(model, feeds)
    metadata = {
        "format": PT2_FORMAT,
        "source_weights": path.name,
        "variant": cfg.variant,
        "image_size": str(size),
        "canny_low": str(cfg.canny_low),
        "canny_high": str(cfg.canny_high),
        "threshold": str(cfg.threshold),
        "normalize": cfg.normalize,  # 16-bit/float images to uint8 (msrfnet.data.io.to_uint8)
        "calibration_images": str(len(files)),
        "torch_version": torch.__version__,
    }
    checks = feeds[1:4] or feeds[:1]  # not only the example: the stride bug above passed on it
    worst: dict[str, float] = {}

    def write(tmp: str) -> None:
        worst.update(_compile_verified(quantized, feeds[0], checks, metadata, tmp, name=out))

    try:
        destination.write_file(write)
    except MSRFError:
        raise
    except Exception as e:  # export/inductor failures: one line, the traceback with --debug
        first = first_line(e)
        raise MSRFError(
            f"{out}: int8 AOTInductor compilation failed ({type(e).__name__}: {first})"
        ) from e
    log.info(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.0f} s; "
        f"against the quantized graph on {len(checks)} other calibration image(s): mean "
        f"|Δprobability| ≤ {worst['diff']:.4f}, masks equal on ≥ {worst['agree']:.2%} of the "
        f"pixels); run it with --pt2 {out}"
    )
    return out
