#!/usr/bin/env python3
"""CPU inference of the shipped weights, every way msrfnet offers, timed in one alternating run.

    python benchmarks/cpu_inference_compare.py                 # 2 threads, batch 1, 256², 5 rounds
    python benchmarks/cpu_inference_compare.py --rounds 8 --work /tmp/cmp

Variants: PyTorch float32 (``msrf predict --exact``), PyTorch bfloat16 fast path (the ``msrf
predict`` default on CPUs with native bf16), onnxruntime float32 (``msrf export``) and int8
(``msrf export --int8``). Each round runs every variant ``--reps`` times in turn, so a busy machine
slows all of them alike; the table gives the median and the minimum over rounds, in seconds per
image, and the ratio to PyTorch float32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing


def alternate(
    runs: dict[str, Callable[[], object]], rounds: int, reps: int
) -> dict[str, list[float]]:
    """Seconds per call of each run, per round; every round runs each of them ``reps`` times in
    turn, so that a busy machine slows all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            times[name].append((time.perf_counter() - t0) / reps)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--work", help="folder for the exported models (default: a temporary one)")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from msrfnet.accel.cpu import flush_denormals, optimize_for_cpu_inference
    from msrfnet.export.onnx import export_onnx
    from msrfnet.export.onnx_int8 import export_int8
    from msrfnet.model.loading import load_model
    from msrfnet.weights.resolve import resolve_weights

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="msrf-cmp-"))
    work.mkdir(parents=True, exist_ok=True)
    fp32_onnx, int8_onnx = work / "fp32.onnx", work / "int8.onnx"
    if not fp32_onnx.exists():  # their messages go to the msrfnet logger (silent here)
        export_onnx(None, fp32_onnx, image_size=args.image_size)
    if not int8_onnx.exists():
        export_int8(None, int8_onnx, image_size=args.image_size)

    s = args.image_size
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, s, s), dtype=np.float32)
    c = (rng.random((1, 1, s, s)) < 0.1).astype(np.float32)
    tx, tc = torch.from_numpy(x), torch.from_numpy(c)
    model = (
        load_model(resolve_weights(None, prefer_runs=False), map_location="cpu")[0].float().eval()
    )
    fast = optimize_for_cpu_inference(model, dtype=torch.bfloat16)

    def torch_run(net):
        def run():
            with flush_denormals(), torch.inference_mode():
                net(tx, tc)

        return run

    def ort_run(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda: sess.run(["final"], {"image": x, "canny": c})

    runs = {
        "pytorch float32 (--exact)": torch_run(model),
        "pytorch bfloat16 (default)": torch_run(fast),
        "onnxruntime float32": ort_run(fp32_onnx),
        "onnxruntime int8 (--int8)": ort_run(int8_onnx),
    }
    for run in runs.values():  # warm-up: allocations, oneDNN primitive caches
        run()
        run()
    times = alternate(runs, args.rounds, args.reps)
    base = float(np.median(times["pytorch float32 (--exact)"]))
    print(
        f"CPU inference, batch 1, {s}², {args.threads} threads, {args.rounds} alternating rounds × "
        f"{args.reps}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(f"{'variant':<30} {'median s/img':>13} {'min s/img':>10} {'speed-up':>9}")
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"{name:<30} {med:13.3f} {min(ts):10.3f} {base / med:8.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
