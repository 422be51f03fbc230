#!/usr/bin/env python3
"""One-shot GPU probe for MSRF-Net training/inference speed: a sweep of ``run_bench`` configurations
plus a profiler breakdown, sized for one short session on the lent H100/H200.

    python tools/gpu_bench_probe.py                      # cuda, ~3 min budget, prints JSON lines
    python tools/gpu_bench_probe.py --budget-s 420 --out "$OUT"
    python tools/gpu_bench_probe.py --configs b32-eager,b32-compile-default
    python tools/gpu_bench_probe.py --device cpu --tiny  # a CPU self-test of this script (~1 min)

Output (stdout): one JSON line per configuration (``"kind": "config"``; a failing configuration
prints its ``"error"`` and the sweep goes on; one that would overrun ``--budget-s`` prints
``"skipped"``), one ``"kind": "profile"`` line per profiled configuration, then a readable summary:
the configurations ranked by training images/s and, for the best, the top-15 kernels by device time
and the share of time in convolution/matmul vs elementwise vs cat/copy/layout kernels, the kernel
count per step and the GPU-busy fraction (kernel time / step time: well under 1 means launch- or
host-bound, near 1 with a large elementwise/copy share means memory-bound).

The first configuration is exactly ``msrf bench --device cuda --json`` (fp32 baseline + the compiled
optimized path at batch 32); the others skip the baseline to save time and vary one thing each
(eager, batch 16/64, NCHW, plain transposed convs, other compile modes). Each config's keys are
fields of ``msrfnet.bench.plan.BenchOptions``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import torch  # noqa: E402

from msrfnet.bench.plan import BenchOptions  # noqa: E402
from msrfnet.bench.run import run_bench  # noqa: E402

#: name → BenchOptions fields, in priority order (the budget cuts from the end).
CUDA_CONFIGS = {
    # first: exactly `msrf bench --device cuda --json` (baseline + compiled optimized path)
    "b32-compile-default": dict(batch_size=32, compile=True, compile_mode="default", baseline=True),
    "b32-eager": dict(batch_size=32, compile=False),
    "b64-eager": dict(batch_size=64, compile=False),
    "b16-eager": dict(batch_size=16, compile=False),
    "b32-eager-nchw": dict(batch_size=32, compile=False, channels_last=False),
    "b32-eager-convT": dict(batch_size=32, compile=False, subpixel=False),
    "b32-compile-reduce-overhead": dict(
        batch_size=32, compile=True, compile_mode="reduce-overhead"
    ),
    "b32-compile-max-autotune-no-cudagraphs": dict(
        batch_size=32, compile=True, compile_mode="max-autotune-no-cudagraphs"
    ),
    "b64-compile-default": dict(batch_size=64, compile=True, compile_mode="default"),
}
#: rough cost of a configuration before one like it has run (seconds on an H100)
PRIOR_COST = {
    "eager": 20.0,
    "default": 150.0,
    "reduce-overhead": 180.0,
    "max-autotune-no-cudagraphs": 400.0,
}

TINY_CONFIGS = {
    "b2-compile-default": dict(batch_size=2, compile=True, compile_mode="default", baseline=True),
    "b2-eager": dict(batch_size=2, compile=False),
    "b1-eager": dict(batch_size=1, compile=False),
    "b2-eager-nchw": dict(batch_size=2, compile=False, channels_last=False),
    "b2-eager-convT": dict(batch_size=2, compile=False, subpixel=False),
    "selftest-error": dict(batch_size=2, compile=False, image_size=30),  # must fail and be reported
}

CATEGORIES = (
    "conv/matmul",
    "elementwise",
    "cat/copy/layout",
    "reduction/norm",
    "optimizer",
    "other",
)


def category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("adam", "multi_tensor", "foreach")):
        return "optimizer"
    if any(k in n for k in ("bn_fw", "bn_bw", "batch_norm", "batchnorm", "welford")):
        return "reduction/norm"
    if any(
        k in n
        for k in (
            "conv",
            "gemm",
            "xmma",
            "cutlass",
            "wgrad",
            "dgrad",
            "fprop",
            "implicit",
            "nvjet",
            "cublas",
            "mkldnn",
            "addmm",
            "aten::mm",
            "aten::bmm",
            "triton_tem",
            "sm90_",
            "sm80_",
            "cudnn",
        )
    ):
        return "conv/matmul"
    if n.startswith("triton_poi"):
        return "elementwise"
    if n.startswith(("triton_red", "triton_per")):
        return "reduction/norm"
    if any(
        k in n
        for k in (
            "cat",
            "copy",
            "memcpy",
            "memset",
            "transpose",
            "permute",
            "pad",
            "index",
            "gather",
            "scatter",
            "nchwtonhwc",
            "nhwctonchw",
            "clone",
            "contiguous",
            "fill",
            "_to_copy",
        )
    ):
        return "cat/copy/layout"
    if any(k in n for k in ("reduce", "sum", "mean", "norm")):
        return "reduction/norm"
    if any(
        k in n
        for k in (
            "elementwise",
            "relu",
            "sigmoid",
            "mul",
            "add",
            "leaky",
            "threshold",
            "where",
            "clamp",
            "log",
            "exp",
            "div",
            "sub",
            "neg",
            "pow",
            "sqrt",
            "max_pool",
            "upsample",
            "bernoulli",
            "dropout",
            "rand",
            "lerp",
            "addcdiv",
            "addcmul",
        )
    ):
        return "elementwise"
    return "other"


def profile_hook(n_steps: int):
    """A ``train_hook`` for run_bench: profile ``n_steps`` warm training steps, return a summary."""

    def hook(step, device):
        from torch.profiler import ProfilerActivity, profile

        cuda = device.type == "cuda"
        syncs = None
        if cuda:  # one step with CUDA's sync debugging: host synchronisations inside a step
            import warnings

            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    step()
                syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(n_steps):
                step()
            if cuda:
                torch.cuda.synchronize(device)
        wall = (time.perf_counter() - t0) / n_steps
        per_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        if cuda:
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    rec = per_name[e.name]
                    rec[0] += e.time_range.elapsed_us()
                    rec[1] += 1
        else:  # CPU: self time of the aten ops (the CPU "kernels")
            for e in prof.key_averages():
                if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
                    per_name[e.key] = [float(e.self_cpu_time_total), e.count]
        total = sum(v[0] for v in per_name.values()) or 1.0
        frac = dict.fromkeys(CATEGORIES, 0.0)
        for name, (us, _) in per_name.items():
            frac[category(name)] += us / total
        top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:15]
        return {
            "steps": n_steps,
            "kernel_ms_per_step": total / 1e3 / n_steps,
            "kernels_per_step": sum(v[1] for v in per_name.values()) / n_steps,
            "profiled_wall_ms_per_step": wall * 1e3,
            "host_syncs_per_step": syncs,
            "fractions": {k: round(v, 4) for k, v in frac.items()},
            "top": [
                {
                    "name": name[:160],
                    "category": category(name),
                    "ms_per_step": us / 1e3 / n_steps,
                    "calls_per_step": n / n_steps,
                    "pct": 100 * us / total,
                }
                for name, (us, n) in top
            ],
        }

    return hook


def _cost_key(cfg: dict) -> str:
    return cfg.get("compile_mode", "default") if cfg.get("compile") else "eager"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument(
        "--tiny", action="store_true", help="32² images, batch ≤ 2, 1 step: a fast self-test (CPU)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=170.0, help="skip configurations that would end past this"
    )
    ap.add_argument(
        "--configs", help="comma-separated configuration names (default: all, in priority order)"
    )
    ap.add_argument(
        "--steps", type=int, help="timed steps per configuration (default: run_bench's)"
    )
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument(
        "--profile-steps",
        type=int,
        default=2,
        help="profiled training steps per configuration (0: none)",
    )
    ap.add_argument("--threads", type=int, help="CPU threads (default: run_bench's)")
    ap.add_argument("--out", help="also write probe.jsonl and summary.txt into this folder")
    args = ap.parse_args(argv)

    table = TINY_CONFIGS if args.tiny else CUDA_CONFIGS
    names = args.configs.split(",") if args.configs else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {list(table)}")
    common = dict(
        device=args.device,
        as_json=False,  # each run's table goes to the log as well
        image_size=args.image_size,
        steps=args.steps,
        threads=args.threads,
    )
    if args.tiny:
        common.update(image_size=32, steps=1, warmup=1, infer_batch_size=1)

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    out_lines: list[str] = []
    jsonl = None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        jsonl = open(
            Path(args.out) / "probe.jsonl", "w"
        )  # written as it goes: a killed run keeps its lines

    def emit(obj) -> None:
        line = json.dumps(obj) if not isinstance(obj, str) else obj
        print(line, flush=True)
        out_lines.append(line)
        if jsonl is not None and line.startswith("{"):
            jsonl.write(line + "\n")
            jsonl.flush()

    env = {
        "kind": "env",
        "torch": torch.__version__,
        "device": args.device,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.device == "cuda"
        else None,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    emit(env)

    start = time.perf_counter()
    seen_cost: dict[str, float] = {}
    results, profiles = {}, {}
    for name in names:
        cfg = dict(table[name])
        kw = {**common, **cfg}
        kw.setdefault("baseline", False)
        key = _cost_key(cfg)
        elapsed = time.perf_counter() - start
        est = seen_cost.get(
            key, PRIOR_COST.get(key, 150.0) if args.device == "cuda" and not args.tiny else 0.0
        )
        if elapsed + est > args.budget_s:
            emit(
                {
                    "kind": "config",
                    "name": name,
                    "skipped": (
                        f"budget: {elapsed:.0f} s used + ~{est:.0f} s > {args.budget_s:.0f} s"
                    ),
                }
            )
            continue
        if args.profile_steps > 0:
            kw["train_hook"] = profile_hook(args.profile_steps)
        t0 = time.perf_counter()
        logging.info("probe: %s ...", name)
        try:
            hook, as_json = kw.pop("train_hook", None), kw.pop("as_json", False)
            r = run_bench(BenchOptions(**kw), as_json=as_json, train_hook=hook)
        except Exception as e:  # report and go on
            emit(
                {
                    "kind": "config",
                    "name": name,
                    "error": f"{type(e).__name__}: {e}"[:1000],
                    "traceback": traceback.format_exc(limit=4)[-1500:],
                    "seconds": time.perf_counter() - t0,
                }
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                torch._dynamo.reset()
            except Exception:
                pass
            continue
        took = time.perf_counter() - t0
        seen_cost[key] = took
        prof = r.pop("train_hook", None)
        row = {"kind": "config", "name": name, "seconds": round(took, 1), **r}
        results[name] = row
        emit(row)
        if prof is not None:
            prof = {"kind": "profile", "config": name, **prof}
            if r.get("train_step_s"):
                prof["gpu_busy_fraction"] = (
                    prof["kernel_ms_per_step"] / 1e3 / r["train_step_s"]
                    if args.device == "cuda"
                    else None
                )
            profiles[name] = prof
            emit(prof)

    for line in summary(results, profiles):
        emit(line)
    emit(f"probe total {time.perf_counter() - start:.0f} s")
    if jsonl is not None:
        jsonl.close()
        (Path(args.out) / "summary.txt").write_text(
            "\n".join(x for x in out_lines if not x.startswith("{")) + "\n"
        )
    return 0


def summary(results: dict, profiles: dict) -> list[str]:
    if not results:
        return ["no configuration ran"]
    lines = [
        f"{'config':<40} {'train img/s':>11} {'infer img/s':>11} {'GiB/img':>8} {'MFU':>6} "
        f"{'compile':<30}"
    ]
    ranked = sorted(results.values(), key=lambda r: -r["train_img_s"])
    for r in ranked:
        gib = r.get("peak_gib_per_train_img")
        infer = r.get("infer_img_s")
        lines.append(
            f"{r['name']:<40} {r['train_img_s']:>11.2f} "
            f"{infer if infer is not None else float('nan'):>11.2f} "
            f"{gib if gib is not None else float('nan'):>8.3f} {100 * r['mfu']:>5.1f}% "
            f"{str(r['compile_status'])[:30]:<30}"
        )
    base = next((r for r in results.values() if r.get("baseline_train_img_s")), None)
    if base:
        lines.append(
            f"fp32 eager baseline (batch {base['batch_size']}): train "
            f"{base['baseline_train_img_s']:.2f} img/s, infer "
            f"{base['baseline_infer_img_s'] or float('nan'):.2f} img/s; best optimized "
            f"×{ranked[0]['train_img_s'] / base['baseline_train_img_s']:.2f} train"
        )
    best = next((r["name"] for r in ranked if r["name"] in profiles), None)
    if best:
        p = profiles[best]
        busy = p.get("gpu_busy_fraction")
        lines.append(
            f"profile of {best}: {p['kernel_ms_per_step']:.1f} ms of kernels per step, "
            f"{p['kernels_per_step']:.0f} kernels per step"
            + (f", GPU busy {100 * busy:.0f}% of the step" if busy is not None else "")
            + (
                f", {p['host_syncs_per_step']} host syncs per step"
                if p.get("host_syncs_per_step") is not None
                else ""
            )
        )
        lines.append(
            "  time by kind: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in p["fractions"].items())
        )
        for t in p["top"]:
            lines.append(
                f"  {t['pct']:5.1f}% {t['ms_per_step']:8.2f} ms {t['calls_per_step']:6.0f}× "
                f"[{t['category']}] {t['name'][:110]}"
            )
        for name, q in profiles.items():
            if name != best:
                lines.append(
                    f"  {name}: {q['kernel_ms_per_step']:.1f} ms kernels/step, "
                    f"{q['kernels_per_step']:.0f} kernels; "
                    + ", ".join(
                        f"{k} {100 * v:.0f}%" for k, v in q["fractions"].items() if v >= 0.005
                    )
                )
    return lines


if __name__ == "__main__":
    sys.exit(main())
