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
from typing import Any, Callable

import torch

from msrfnet.accel.cpu import cpu_supports_bf16
from msrfnet.bench.table import format_table
from msrfnet.bench.timing import (
    PathSpec,
    _inference_path,
    _matmul_peak,
    _measure,
    _random_batch,
    _training_path,
    matmul_peak_tflops,
    model_flops,
    resolve_device,
    saved_activation_gib,
)
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet
from msrfnet.options import check_image_size

__all__ = [
    "CUDA_DEFAULTS",
    "CPU_DEFAULTS",
    "DEFAULT_COMPILE_MODE",
    "COMPILE_MODES",
    "run_bench",
    "format_table",
    "model_flops",
]

log = logging.getLogger(__name__)

CUDA_DEFAULTS = {"batch_size": 32, "warmup": 3, "steps": 20}
CPU_DEFAULTS = {"batch_size": 2, "warmup": 1, "steps": 2, "threads": 2}
DEFAULT_COMPILE_MODE = "default"  # max-autotune tunes every conv shape: many minutes for this model
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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


def _specs(
    device: torch.device,
    compile: bool,
    compile_mode: str | None,
    compile_cpu: bool,
    channels_last: bool,
    subpixel: bool,
    amp: bool,
) -> tuple[PathSpec, PathSpec]:

    cuda = device.type == "cuda"
    bf16 = amp and (cuda and torch.cuda.is_bf16_supported() or not cuda and cpu_supports_bf16())
    base = PathSpec("baseline")
    opt = PathSpec(
        "optimized",
        memory_efficient=True,
        amp_dtype=torch.bfloat16 if bf16 else None,
        channels_last=channels_last,
        subpixel=subpixel,
        compile=compile and (cuda or compile_cpu),
        compile_mode=compile_mode,
        fused_adam=cuda,
        cudnn_benchmark=cuda,
        cpu_inference_helper=not cuda,
    )
    return base, opt


def run_bench(
    device: str | None = None,
    as_json: bool = False,
    batch_size: int | None = None,
    image_size: int = 256,
    steps: int | None = None,
    compile: bool = True,
    *,
    compile_mode: str | None = None,
    channels_last: bool = True,
    subpixel: bool = True,
    amp: bool = True,
    warmup: int | None = None,
    infer_batch_size: int | None = None,
    threads: int | None = None,
    baseline: bool = True,
    inference: bool = True,
    compile_cpu: bool = False,
    variant: str = "official",
    seed: int = 0,
    train_hook: Callable | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark the baseline and the optimized path in one run; returns (and prints) the results.

    ``device`` None → CUDA when available. Defaults: CUDA batch 32, 3 warm-up + 20 timed steps,
    inference at the training batch size; CPU batch 2, 1 warm-up + 2 timed training steps,
    inference at batch 1 (1 warm-up + ``max(steps, 3)`` timed), 2 threads. ``compile_mode`` is
    ``torch.compile``'s mode (``"default"``, ``"reduce-overhead"`` = CUDA graphs,
    ``"max-autotune-no-cudagraphs"``…; default ``DEFAULT_COMPILE_MODE``). ``baseline=False`` or
    ``inference=False`` skip those parts (their keys are then ``None``). With ``as_json`` exactly
    one JSON object goes to stdout and everything else to stderr; otherwise the table is logged
    (INFO). ``train_hook(step, device)`` is called with the optimized path's warm training step
    after its timing (``tools/gpu_bench_probe.py`` profiles it there); its result is
    ``result["train_hook"]``. ``extra`` is merged into the result (``msrf bench --data``:
    :mod:`msrfnet.bench.data`'s keys).
    """
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    d = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    check_image_size(image_size, "msrf bench: --image-size")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise MSRFError(
            f"msrf bench: compile mode must be one of {', '.join(COMPILE_MODES)}, got "
            f"{compile_mode!r}"
        )
    compile_mode = compile_mode or DEFAULT_COMPILE_MODE
    batch = batch_size or d["batch_size"]
    steps_train = steps or d["steps"]
    warm = warmup if warmup is not None else d["warmup"]
    if cuda:
        warm = max(warm, 1)
    infer_batch = infer_batch_size or (batch if cuda else 1)
    steps_infer = (steps or d["steps"]) if cuda else max(steps or 3, 3)
    # 2 threads (the documented CPU figure), or fewer where torch is already limited to fewer
    nthreads = None if cuda else (threads or min(CPU_DEFAULTS["threads"], torch.get_num_threads()))
    if batch < 1 or steps_train < 1 or infer_batch < 1:
        raise MSRFError("msrf bench: --batch-size and --steps must be at least 1")

    stdout_guard = _stdout_to_stderr() if as_json else contextlib.nullcontext()
    with stdout_guard, _backend_state(dev, nthreads):
        result = _run(
            dev,
            batch,
            image_size,
            steps_train,
            steps_infer,
            warm,
            infer_batch,
            nthreads,
            _specs(dev, compile, compile_mode, compile_cpu, channels_last, subpixel, amp),
            compile=compile,
            compile_mode=compile_mode,
            baseline=baseline,
            inference=inference,
            variant=variant,
            seed=seed,
            train_hook=train_hook,
        )
    result.update(extra or {})
    if "data_img_s" in result:
        result["data_over_train"] = result["data_img_s"] / result["train_img_s"]
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        for line in format_table(result):
            log.info(line)
    return result


def _run(
    dev,
    batch,
    image_size,
    steps_train,
    steps_infer,
    warm,
    infer_batch,
    nthreads,
    specs,
    *,
    compile,
    compile_mode,
    baseline,
    inference,
    variant,
    seed,
    train_hook,
) -> dict[str, Any]:

    cuda = dev.type == "cuda"
    base_spec, opt_spec = specs
    torch.manual_seed(seed)
    model = MSRFNet(variant=variant)
    fwd_flops, train_flops = model_flops(image_size, variant)
    log.info("bench: peak matmul rate on %s ...", dev)
    peak = matmul_peak_tflops(dev)
    data = _random_batch(batch, image_size, dev, seed)
    infer_data = _random_batch(infer_batch, image_size, dev, seed + 1)[:2]

    specs_run = ((base_spec,) if baseline else ()) + (opt_spec,)
    log.info(
        "bench: training, batch %d, %d warm-up + %d timed steps: %s ...",
        batch,
        warm,
        steps_train,
        " and ".join(s.name for s in specs_run),
    )
    train = _measure(
        [(s, functools.partial(_training_path, model, s, data, dev)) for s in specs_run],
        warmup=warm,
        steps=steps_train,
        device=dev,
        hook_spec=opt_spec,
        hook=train_hook,
    )
    saved = {s.name: saved_activation_gib(model, s, dev, image_size) for s in specs_run}
    infer: dict[str, dict[str, Any]] = {}
    if inference:
        log.info("bench: inference, batch %d ...", infer_batch)
        infer = _measure(
            [
                (s, functools.partial(_inference_path, model, s, *infer_data, dev))
                for s in specs_run
            ],
            warmup=warm,
            steps=steps_infer,
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
    probs = {k: r["first"] for k, r in infer.items() if r.get("first") is not None}

    if not cuda:  # a busy CPU lowers the peak too: take the better of two measurements
        _matmul_peak.cache_clear()
        peak = max(peak, matmul_peak_tflops(dev))

    def g(name, part, key):
        r = (train if part == "train" else infer).get(name)
        return None if r is None or "error" in r else r.get(key)

    o, b = "optimized", "baseline"

    def tflops(img_s, flops):
        return None if img_s is None else img_s * flops / 1e12

    res: dict[str, Any] = {
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev)
        if cuda
        else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "image_size": image_size,
        "batch_size": batch,
        "infer_batch_size": infer_batch,
        "steps": steps_train,
        "infer_steps": steps_infer,
        "warmup": warm,
        "threads": torch.get_num_threads() if not cuda else None,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "variant": variant,
        "compile": compile,
        "compile_mode": compile_mode if opt_spec.compile else None,
        "compile_status": g(o, "train", "compile_status")
        if opt_spec.compile
        else ("skipped on cpu (see compile_cpu)" if compile and not cuda else "off"),
        "infer_compile_status": g(o, "infer", "compile_status"),
        "amp_dtype": str(opt_spec.amp_dtype).replace("torch.", "")
        if opt_spec.amp_dtype
        else "float32",
        "channels_last": opt_spec.channels_last,
        "subpixel": opt_spec.subpixel,
        "memory_efficient": opt_spec.memory_efficient,
        "fused_adam": opt_spec.fused_adam,
        "cudnn_benchmark": opt_spec.cudnn_benchmark,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        "flops_per_img_fwd": fwd_flops,
        "flops_per_img_train": train_flops,
        "peak_tflops": peak,
        "train_img_s": g(o, "train", "img_s"),
        "train_step_s": g(o, "train", "step_s_median"),
        "train_warmup_s": g(o, "train", "warmup_s"),
        "infer_img_s": g(o, "infer", "img_s"),
        "infer_warmup_s": g(o, "infer", "warmup_s"),
        "peak_gib": g(o, "train", "peak_gib"),
        "peak_gib_per_train_img": g(o, "train", "peak_gib_per_img"),
        "train_tflops": tflops(g(o, "train", "img_s"), train_flops),
        "infer_tflops": tflops(g(o, "infer", "img_s"), fwd_flops),
        "baseline_train_img_s": g(b, "train", "img_s"),
        "baseline_train_step_s": g(b, "train", "step_s_median"),
        "baseline_infer_img_s": g(b, "infer", "img_s"),
        "baseline_peak_gib_per_train_img": g(b, "train", "peak_gib_per_img"),
        "saved_gib_per_train_img": saved.get(o),
        "baseline_saved_gib_per_train_img": saved.get(b),
        "baseline_train_tflops": tflops(g(b, "train", "img_s"), train_flops),
    }
    res["baseline_error"] = baseline_error
    res["mfu"] = res["train_tflops"] / peak
    res["infer_mfu"] = None if res["infer_tflops"] is None else res["infer_tflops"] / peak
    res["baseline_mfu"] = (
        None if res["baseline_train_tflops"] is None else res["baseline_train_tflops"] / peak
    )
    res["speedup_train"] = (
        None
        if res["baseline_train_img_s"] is None
        else res["train_img_s"] / res["baseline_train_img_s"]
    )
    res["speedup_infer"] = (
        None
        if res["infer_img_s"] is None or res["baseline_infer_img_s"] is None
        else res["infer_img_s"] / res["baseline_infer_img_s"]
    )
    res["infer_max_prob_diff"] = (
        float((probs["optimized"] - probs["baseline"]).abs().max())
        if "optimized" in probs and "baseline" in probs
        else None
    )
    if train_hook is not None:
        res["train_hook"] = g(o, "train", "hook")
    if not cuda:
        res["infer_s_per_img"] = g(o, "infer", "s_per_img")
        res["baseline_infer_s_per_img"] = g(b, "infer", "s_per_img")
        res["cpu_max_rss_gib"] = _max_rss_gib()
    return res


def _max_rss_gib() -> float | None:
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib / 2**20 if sys.platform != "darwin" else kib / 2**30
    except Exception:  # pragma: no cover
        return None
