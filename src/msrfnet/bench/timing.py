"""The measuring half of ``msrf bench`` (:mod:`msrfnet.bench.run`): device resolution, FLOP
counting, the measured matmul peak, and building, warming and timing the training and inference
paths.

:mod:`msrfnet.bench.run` assembles the results and prints them; the definitions of the reported
figures are in its docstring.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from msrfnet.errors import MSRFError
from msrfnet.losses import MSRFLoss
from msrfnet.model import MSRFNet

__all__ = [
    "PathSpec",
    "resolve_device",
    "model_flops",
    "matmul_peak_tflops",
    "saved_activation_gib",
]

# the name it had before the split from msrfnet.bench.run: filters set on that logger still apply
log = logging.getLogger("msrfnet.bench.run")


@dataclass(frozen=True)
class PathSpec:
    """How one path runs: numerics, memory layout, compilation, optimizer."""

    name: str
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    subpixel: bool = False
    compile: bool = False
    compile_mode: str | None = None
    fused_adam: bool = False
    cudnn_benchmark: bool = False
    cpu_inference_helper: bool = False  # CPU: optimize_for_cpu_inference for the inference part
    memory_efficient: bool = (
        False  # DSDF layers keep their inputs, not their concatenation (model/dense.py)
    )


# --- devices and ceilings -------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MSRFError(
            "msrf bench: --device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu"
        )
    if dev.type not in ("cuda", "cpu"):
        raise MSRFError(f"msrf bench: device must be cuda or cpu, got {device!r}")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=8)
def model_flops(image_size: int, variant: str = "official") -> tuple[float, float]:
    """(forward, training) FLOPs per image: FlopCounterMode on meta tensors at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = MSRFNet(variant=variant)
        x = torch.empty(1, 3, image_size, image_size)
        canny, mask, edge = (torch.empty(1, 1, image_size, image_size) for _ in range(3))
    with FlopCounterMode(display=False) as fc:
        out = net(x, canny)
    fwd = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        out = net(x, canny)
        loss, _ = MSRFLoss()(out, mask, edge)
        loss.backward()
    return float(fwd), float(fc.get_total_flops())


def matmul_peak_tflops(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int | None = None
) -> float:
    """Measured dense matmul rate (TFLOP/s) of n³ products on random operands: the median on CUDA,
    the fastest on the CPU (as the model timings there). Cached per device, dtype, size, threads."""
    return _matmul_peak(str(device), dtype, n, torch.get_num_threads())


@functools.lru_cache(maxsize=8)
def _matmul_peak(device_str: str, dtype: torch.dtype, n: int | None, threads: int) -> float:
    device = torch.device(device_str)
    n = n or (8192 if device.type == "cuda" else 2048)
    reps, warm = (10, 3) if device.type == "cuda" else (8, 1)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(warm):
        a @ b
    times = _time_calls(lambda: a @ b, reps, device)
    return 2 * n**3 / (_median(times) if device.type == "cuda" else min(times)) / 1e12


# --- timing ---------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def _time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Seconds per call for n calls. CUDA: events recorded between calls, one sync at the end."""
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        torch.cuda.synchronize(device)
        events[0].record()
        for i in range(n):
            fn()
            events[i + 1].record()
        torch.cuda.synchronize(device)
        return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(n)]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _throughput(n: int, times: list[float], device: torch.device) -> float:
    """Images/s: CUDA → all timed calls (the device is ours alone); CPU → the fastest call, the
    one least disturbed by other processes on a shared machine."""
    return n / min(times) if device.type == "cpu" else n * len(times) / sum(times)


# --- paths ----------------------------------------------------------------------------------------
def _random_batch(
    batch: int, size: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g)
    canny = (torch.rand(batch, 1, size, size, generator=g) < 0.1).float()
    mask = (torch.rand(batch, 1, size, size, generator=g) < 0.3).float()
    edge = (torch.rand(batch, 1, size, size, generator=g) < 0.05).float()
    return tuple(t.to(device) for t in (image, canny, mask, edge))


def _prepare(model, spec: PathSpec, device: torch.device) -> torch.nn.Module:
    """A copy of the MSRFNet ``model`` built with the spec's options, on ``device``."""
    upsampling = "subpixel" if spec.subpixel else "transposed"
    net = model.rebuild(memory_efficient=spec.memory_efficient, upsampling=upsampling)
    net = net.to(device)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


class _Runner:
    """Calls a module eagerly or compiled; a compile error at any call falls back to eager once."""

    def __init__(self, net: torch.nn.Module, spec: PathSpec):
        self.net = net
        self.status = "off"
        self.fn: Callable = net
        self.cudagraphs = spec.compile and spec.compile_mode in ("reduce-overhead", "max-autotune")
        if spec.compile:
            mode = None if spec.compile_mode in (None, "default") else spec.compile_mode
            try:
                self.fn = torch.compile(net, mode=mode)
                self.status = f"compiled ({spec.compile_mode or 'default'})"
            except Exception as e:  # pragma: no cover - platform dependent
                self._fallback(e)

    def _fallback(self, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[
            :300
        ]
        log.warning("torch.compile failed (%s); running eagerly", msg)
        self.status = f"fallback to eager: {msg}"
        self.fn = self.net
        self.cudagraphs = False

    def guarded(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` (it uses ``self.fn``); on a compile-time error switch to eager and retry."""
        if self.fn is self.net:
            return call()
        try:
            return call()
        except Exception as e:
            if isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            self._fallback(e)
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
            return call()


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@dataclass
class _Path:
    """One built path: ``call()`` runs one training step or one inference batch."""

    spec: PathSpec
    call: Callable[[], Any]
    runner: _Runner
    batch: int
    first_output: Callable[[Any], Any] | None = None  # what to keep of the first call's result


def _training_path(
    model, spec: PathSpec, data: tuple[torch.Tensor, ...], device: torch.device
) -> _Path:
    """A full step: forward (autocast), MSRFLoss, backward, Adam step; no host synchronisation."""

    net = _prepare(model, spec, device).train()
    image, canny, mask, edge = data
    if spec.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    crit = MSRFLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True if spec.fused_adam else None)
    runner = _Runner(net, spec)

    def step() -> None:
        if runner.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with _autocast(device, spec.amp_dtype):
            out = runner.fn(image, canny)
        loss, _ = crit(out, mask, edge)
        loss.backward()
        opt.step()

    return _Path(spec, step, runner, image.shape[0])


def _inference_path(
    model, spec: PathSpec, image: torch.Tensor, canny: torch.Tensor, device: torch.device
) -> _Path:
    """One eval-mode forward under ``torch.inference_mode``; the CPU's optimized path uses
    :func:`~msrfnet.accel.cpu.optimize_for_cpu_inference`."""
    if spec.cpu_inference_helper and device.type == "cpu":
        from msrfnet.accel.cpu import optimize_for_cpu_inference

        net = optimize_for_cpu_inference(
            model,
            dtype=spec.amp_dtype or torch.float32,
            channels_last=spec.channels_last,
            subpixel=spec.subpixel,
        )
        amp = None  # the helper holds the weights in its own dtype
    else:
        net = _prepare(model, spec, device).eval()
        amp = spec.amp_dtype
    if spec.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    runner = _Runner(net, spec)

    def call():
        if runner.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode(), _autocast(device, amp):
            return runner.fn(image, canny)

    def probabilities(out):
        return torch.sigmoid(out.final.float()).clone()  # clone: CUDA-graph outputs get overwritten

    return _Path(spec, call, runner, image.shape[0], probabilities)


def saved_activation_gib(model, spec: PathSpec, device: torch.device, image_size: int) -> float:
    """GiB that autograd keeps for the backward pass per training image under ``spec``'s settings:
    distinct non-parameter storages saved during one eager training forward at batch 2 minus the
    same at batch 1, so that what is stored once per step (the bf16 copies of the weights under
    autocast) is not counted as per-image memory.

    The activation memory of a training step, measurable on any device (the CUDA peak adds
    parameters, gradients, optimizer state and the backward's transient buffers on top).
    """
    net = _prepare(model, spec, device).train()
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def saved_bytes(batch: int) -> int:
        image, canny = _random_batch(batch, image_size, device)[:2]
        if spec.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()  # saved tensors stay alive: no address is reused
            if ptr not in params:
                saved.setdefault(ptr, t.untyped_storage().nbytes())
            return t

        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            _autocast(device, spec.amp_dtype),
        ):
            out = net(image, canny)
        del out
        return sum(saved.values())

    return (saved_bytes(2) - saved_bytes(1)) / 2**30


def _warm(path: _Path, warmup: int, device: torch.device) -> tuple[float, Any]:
    """At least one untimed call (compilation happens here); returns its time and first output."""
    t0 = time.perf_counter()
    out = path.runner.guarded(path.call)
    first = path.first_output(out) if path.first_output else None
    del out
    for _ in range(warmup - 1):
        path.runner.guarded(path.call)
    _sync(device)
    return time.perf_counter() - t0, first


def _summary(
    path: _Path, times: list[float], warmup_s: float, device: torch.device
) -> dict[str, Any]:
    img_s = _throughput(path.batch, times, device)
    return {
        "img_s": img_s,
        "s_per_img": 1.0 / img_s,
        "step_s_median": _median(times),
        "step_s_min": min(times),
        "warmup_s": warmup_s,
        "compile_status": path.runner.status,
        "peak_gib": None,
        "peak_gib_per_img": None,
    }


def _measure(
    builders: list[tuple[PathSpec, Callable[[], _Path]]],
    *,
    warmup: int,
    steps: int,
    device: torch.device,
    hook_spec: PathSpec | None = None,
    hook: Callable | None = None,
    interleave: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Time each path's ``call``.

    Sequential (the default on CUDA): one path after the other, built, warmed, timed (CUDA events),
    its peak memory read, freed, so that each has the device and its memory figure to itself.
    Interleaved (the default on the CPU): all paths built and warmed first, then timed in turns
    (a, b, a, b, …) so that a busy machine slows them alike. ``hook(call, device)`` runs after the
    timing on ``hook_spec``'s path. A path that runs out of CUDA memory gets ``{"error": ...}``.
    """
    cuda = device.type == "cuda"
    interleave = not cuda if interleave is None else interleave
    out: dict[str, dict[str, Any]] = {}
    warmed: list[tuple[_Path, float, Any]] = []
    for spec, build in builders:
        torch.backends.cudnn.benchmark = spec.cudnn_benchmark
        path = None
        try:
            path = build()
            warmup_s, first = _warm(path, warmup, device)
            if interleave:
                warmed.append((path, warmup_s, first))
                continue
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            res = {
                **_summary(path, _time_calls(path.call, steps, device), warmup_s, device),
                "first": first,
            }
            if cuda:
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                res.update(peak_gib=peak, peak_gib_per_img=peak / path.batch)
            if hook is not None and spec is hook_spec:
                res["hook"] = hook(path.call, device)
            out[spec.name] = res
        except torch.cuda.OutOfMemoryError:
            out[spec.name] = {"error": "out of GPU memory"}
        finally:
            if not interleave:
                path = None
                if cuda:
                    torch.cuda.empty_cache()
                with contextlib.suppress(Exception):
                    torch._dynamo.reset()
    if interleave:
        times: dict[str, list[float]] = {p.spec.name: [] for p, _, _ in warmed}
        for _ in range(steps):
            for p, _, _ in warmed:
                times[p.spec.name] += _time_calls(p.call, 1, device)
        for p, warmup_s, first in warmed:
            out[p.spec.name] = {**_summary(p, times[p.spec.name], warmup_s, device), "first": first}
            if hook is not None and p.spec is hook_spec:
                out[p.spec.name]["hook"] = hook(p.call, device)
        warmed.clear()
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
    return out
