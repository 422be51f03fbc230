"""``msrf bench``: training and inference throughput, memory and MFU, baseline vs optimized.

Two paths over the same random-weights MSRF-Net, on random data (images, Canny maps, masks, edges):

- **baseline**: float32 eager, NCHW, ``torch.optim.Adam`` with its defaults (foreach on CUDA),
  PyTorch's default backend flags (note: cuDNN convolutions may use TF32 by default; the JSON
  records ``cudnn_allow_tf32``).
- **optimized**: bfloat16 autocast (where the device has native bf16), channels-last, exact
  sub-pixel transposed convolutions (:mod:`msrfnet.model.upsampling`), ``cudnn.benchmark``,
  ``torch.compile`` (``compile_mode``; falls back to eager on any compile error, reported as
  ``compile_status``), and fused Adam on CUDA. On the CPU, inference uses
  :func:`msrfnet.accel.cpu.optimize_for_cpu_inference` (bf16 weights and activations) and
  ``torch.compile`` is skipped unless ``compile_cpu=True``: on a small CPU compiling takes minutes
  and the compiled model ran no faster than eager (docs/PERFORMANCE.md).

What is timed: one full training step (forward, :class:`~msrfnet.losses.MSRFLoss`, backward,
optimizer step; no data loading) and one inference forward (eval mode, ``torch.inference_mode``).
Warm-up steps (which include compilation and cuDNN autotuning) are not timed. On CUDA the timed
steps are bracketed by CUDA events with no host synchronisation between them.

Definitions:

- ``flops_per_img_fwd`` / ``flops_per_img_train``: counted by ``torch.utils.flop_counter`` on the
  plain model (meta tensors, batch 1, scaled per image), forward and forward+loss+backward. These
  are the model's nominal FLOPs (the sub-pixel form does 16/9 of the work in its 40 layers, ~3 %
  more in all; not counted).
- ``peak_tflops``: a measured bfloat16 matrix product on the device (8192³ on CUDA; 2048³ on the
  CPU, the better of a measurement before and one after the paths), random operands. ``mfu`` =
  achieved training TFLOP/s / ``peak_tflops`` (both paths against the same bf16 peak).
- ``peak_gib_per_train_img``: ``torch.cuda.max_memory_allocated`` over the timed training steps
  divided by the batch size (it includes weights and Adam state, ~0.4 GiB for the whole batch).
  ``None`` on the CPU: process RSS is not a per-step peak; ``cpu_max_rss_gib`` gives the process's
  maximum resident size for orientation.
- throughput: on CUDA all timed steps (total images / total time); on the CPU the fastest timed
  step, the one least disturbed by other processes (``load_avg_1m`` tells how busy the machine
  was). On the CPU ``infer_s_per_img`` / ``baseline_infer_s_per_img`` are seconds per image at
  batch 1 with ``threads`` threads (default 2, or fewer if torch is limited to fewer).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from msrfnet.bench.plan import BenchOptions, BenchPlan, plan_bench
from msrfnet.bench.table import format_table
from msrfnet.bench.timing import (
    _inference_path,
    _matmul_peak,
    _measure,
    _random_batch,
    _training_path,
    matmul_peak_tflops,
    model_flops,
    saved_activation_gib,
)
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet

__all__ = [
    "run_bench",
    "format_table",
    "model_flops",
]

log = logging.getLogger(__name__)


# --- the run --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to stdout to stderr, Python-level and file-descriptor-level (compile
    workers and C++ libraries write to fd 1 directly), so that the JSON stays alone on stdout."""
    sys.stdout.flush()
    saved = None
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no descriptor 1 or 2 (embedded interpreters)
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


@contextlib.contextmanager
def _backend_state(device: torch.device, threads: int | None):
    old_threads = torch.get_num_threads()
    old_bench = torch.backends.cudnn.benchmark
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_bench


def run_bench(
    options: BenchOptions | None = None,
    *,
    as_json: bool = False,
    train_hook: Callable | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark the baseline and the optimized path in one run; returns (and prints) the results.

    ``options.device`` None → CUDA when available. Defaults: CUDA batch 32, 3 warm-up + 20 timed
    steps, inference at the training batch size; CPU batch 2, 1 warm-up + 2 timed training steps,
    inference at batch 1 (1 warm-up + ``max(steps, 3)`` timed), 2 threads. With ``as_json``
    exactly one JSON object goes to stdout and everything else to stderr; otherwise the table is
    logged (INFO). ``train_hook(step, device)`` is called with the optimized path's warm training
    step after its timing (``tools/gpu_bench_probe.py`` profiles it there); its result is
    ``result["train_hook"]``. ``extra`` is merged into the result (``msrf bench --data``:
    :mod:`msrfnet.bench.data`'s keys).
    """
    plan = plan_bench(options or BenchOptions())
    stdout_guard = _stdout_to_stderr() if as_json else contextlib.nullcontext()
    with stdout_guard, _backend_state(plan.device, plan.threads):
        measured = _measure_all(plan, train_hook)
        result = {**_settings(plan, measured), **_figures(plan, measured)}
        if train_hook is not None:
            result["train_hook"] = measured.get("optimized", "train", "hook")
    result.update(extra or {})
    if "data_img_s" in result:
        result["data_over_train"] = result["data_img_s"] / result["train_img_s"]
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        for line in format_table(result):
            log.info(line)
    return result


@dataclass
class _Measured:
    """What the run measured: per part (``train``, ``infer``) and path name the timing results of
    :func:`~msrfnet.bench.timing._measure`, the saved activations per path, the matmul peak."""

    train: dict[str, dict[str, Any]]
    infer: dict[str, dict[str, Any]]
    saved: dict[str, float]
    peak: float
    fwd_flops: float
    train_flops: float
    baseline_error: str | None

    def get(self, name: str, part: str, key: str) -> Any:
        """One figure of one path, None where the path did not run or failed."""
        r = (self.train if part == "train" else self.infer).get(name)
        return None if r is None or "error" in r else r.get(key)


def _measure_all(plan: BenchPlan, train_hook: Callable | None) -> _Measured:
    """Build, warm and time both paths' training steps and inference forwards (see the module
    docstring); an optimized path out of GPU memory is an error, a baseline one a warning."""
    o = plan.options
    dev, batch, infer_batch = plan.device, plan.batch, plan.infer_batch
    torch.manual_seed(o.seed)
    model = MSRFNet(variant=o.variant)
    fwd_flops, train_flops = model_flops(o.image_size, o.variant)
    log.info("bench: peak matmul rate on %s ...", dev)
    peak = matmul_peak_tflops(dev)
    data = _random_batch(batch, o.image_size, dev, o.seed)
    infer_data = _random_batch(infer_batch, o.image_size, dev, o.seed + 1)[:2]
    specs = ((plan.baseline_spec,) if o.baseline else ()) + (plan.optimized_spec,)
    log.info(
        "bench: training, batch %d, %d warm-up + %d timed steps: %s ...",
        batch,
        plan.warmup,
        plan.steps_train,
        " and ".join(s.name for s in specs),
    )
    train = _measure(
        [(s, functools.partial(_training_path, model, s, data, dev)) for s in specs],
        warmup=plan.warmup,
        steps=plan.steps_train,
        device=dev,
        hook_spec=plan.optimized_spec,
        hook=train_hook,
    )
    saved = {s.name: saved_activation_gib(model, s, dev, o.image_size) for s in specs}
    infer: dict[str, dict[str, Any]] = {}
    if o.inference:
        log.info("bench: inference, batch %d ...", infer_batch)
        infer = _measure(
            [(s, functools.partial(_inference_path, model, s, *infer_data, dev)) for s in specs],
            warmup=plan.warmup,
            steps=plan.steps_infer,
            device=dev,
        )
    if "error" in train["optimized"] or "error" in infer.get("optimized", {}):
        raise MSRFError(
            f"msrf bench: out of GPU memory at batch {batch} (inference batch {infer_batch}) on "
            "the optimized path; try a smaller --batch-size"
        )
    baseline_error = next(
        (
            f"{r['error']} at batch {batch}"
            for r in (train.get("baseline"), infer.get("baseline"))
            if r and "error" in r
        ),
        None,
    )
    if baseline_error:  # fp32 needs about twice the activation memory: keep the optimized figures
        log.warning("bench: baseline %s; its columns stay empty", baseline_error)
    if not plan.cuda:  # a busy CPU lowers the peak too: take the better of two measurements
        _matmul_peak.cache_clear()
        peak = max(peak, matmul_peak_tflops(dev))
    return _Measured(train, infer, saved, peak, fwd_flops, train_flops, baseline_error)


def _settings(plan: BenchPlan, m: _Measured) -> dict[str, Any]:
    """The result's description of the run: machine, versions, sizes, the optimized path's
    settings and how its compilation went."""
    o, opt, cuda = plan.options, plan.optimized_spec, plan.cuda
    return {
        "device": plan.device.type,
        "device_name": torch.cuda.get_device_name(plan.device)
        if cuda
        else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "image_size": o.image_size,
        "batch_size": plan.batch,
        "infer_batch_size": plan.infer_batch,
        "steps": plan.steps_train,
        "infer_steps": plan.steps_infer,
        "warmup": plan.warmup,
        "threads": torch.get_num_threads() if not cuda else None,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "variant": o.variant,
        "compile": o.compile,
        "compile_mode": plan.compile_mode if opt.compile else None,
        "compile_status": m.get("optimized", "train", "compile_status")
        if opt.compile
        else ("skipped on cpu (see compile_cpu)" if o.compile and not cuda else "off"),
        "infer_compile_status": m.get("optimized", "infer", "compile_status"),
        "amp_dtype": str(opt.amp_dtype).replace("torch.", "") if opt.amp_dtype else "float32",
        "channels_last": opt.channels_last,
        "subpixel": opt.subpixel,
        "memory_efficient": opt.memory_efficient,
        "fused_adam": opt.fused_adam,
        "cudnn_benchmark": opt.cudnn_benchmark,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _figures(plan: BenchPlan, m: _Measured) -> dict[str, Any]:
    """The result's measured figures (see the module docstring for their definitions)."""
    o, b, peak = "optimized", "baseline", m.peak

    def tflops(img_s, flops):
        return None if img_s is None else img_s * flops / 1e12

    probs = {k: r["first"] for k, r in m.infer.items() if r.get("first") is not None}
    res: dict[str, Any] = {
        "flops_per_img_fwd": m.fwd_flops,
        "flops_per_img_train": m.train_flops,
        "peak_tflops": peak,
        "train_img_s": m.get(o, "train", "img_s"),
        "train_step_s": m.get(o, "train", "step_s_median"),
        "train_warmup_s": m.get(o, "train", "warmup_s"),
        "infer_img_s": m.get(o, "infer", "img_s"),
        "infer_warmup_s": m.get(o, "infer", "warmup_s"),
        "peak_gib": m.get(o, "train", "peak_gib"),
        "peak_gib_per_train_img": m.get(o, "train", "peak_gib_per_img"),
        "train_tflops": tflops(m.get(o, "train", "img_s"), m.train_flops),
        "infer_tflops": tflops(m.get(o, "infer", "img_s"), m.fwd_flops),
        "baseline_train_img_s": m.get(b, "train", "img_s"),
        "baseline_train_step_s": m.get(b, "train", "step_s_median"),
        "baseline_infer_img_s": m.get(b, "infer", "img_s"),
        "baseline_peak_gib_per_train_img": m.get(b, "train", "peak_gib_per_img"),
        "saved_gib_per_train_img": m.saved.get(o),
        "baseline_saved_gib_per_train_img": m.saved.get(b),
        "baseline_train_tflops": tflops(m.get(b, "train", "img_s"), m.train_flops),
        "baseline_error": m.baseline_error,
    }
    res["mfu"] = res["train_tflops"] / peak
    res["infer_mfu"] = _ratio(res["infer_tflops"], peak)
    res["baseline_mfu"] = _ratio(res["baseline_train_tflops"], peak)
    res["speedup_train"] = _ratio(res["train_img_s"], res["baseline_train_img_s"])
    res["speedup_infer"] = _ratio(res["infer_img_s"], res["baseline_infer_img_s"])
    res["infer_max_prob_diff"] = (
        float((probs[o] - probs[b]).abs().max()) if o in probs and b in probs else None
    )
    if not plan.cuda:
        res["infer_s_per_img"] = m.get(o, "infer", "s_per_img")
        res["baseline_infer_s_per_img"] = m.get(b, "infer", "s_per_img")
        res["cpu_max_rss_gib"] = _max_rss_gib()
    return res


def _max_rss_gib() -> float | None:
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib / 2**20 if sys.platform != "darwin" else kib / 2**30
    except Exception:  # pragma: no cover
        return None
