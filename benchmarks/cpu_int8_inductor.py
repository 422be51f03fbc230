#!/usr/bin/env python3
"""int8 MSRF-Net compiled by inductor (``msrfnet.export.pt2_int8``) against the bfloat16 fast path,
on the CPU.

    # timing + test DSC, 2 threads
    python benchmarks/cpu_int8_inductor.py --data ../shared/data/kdsb

Calibrates the shipped weights on 16 images of ``--data``'s training split, compiles the quantized
graph twice — just in time (``torch.compile``) and ahead of time (the AOTInductor package of
``msrf export --int8 --out X.pt2``) — then times bfloat16 (the ``msrf predict`` default) and both
int8 builds alternately (batch 1, 256², ``--rounds`` rounds of ``--reps`` images each: a busy
machine slows all alike) and prints the median and minimum seconds per image. Then the mean
per-image DSC of the masks of each on the test split at 256² (the paper protocol, as ``msrf
test``), and their agreement with float32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing
from cpu_inference_compare import alternate  # noqa: E402  (benchmarks/ is the script's own folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        required=True,
        help="dataset root with train/ and test/ (e.g. ../shared/data/kdsb)",
    )
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration-count", type=int, default=16)
    args = ap.parse_args(argv)

    import torch

    from msrfnet.accel.cpu import flush_denormals, optimize_for_cpu_inference
    from msrfnet.data import MSRFDataset, load_or_build_cache, resolve_data_root
    from msrfnet.export.onnx_int8 import calibration_files
    from msrfnet.export.pt2_int8 import (
        calibration_feeds,
        compile_int8,
        compile_package,
        quantize_model,
    )
    from msrfnet.metrics import per_image_table, summarize
    from msrfnet.model.loading import load_model
    from msrfnet.weights.resolve import SHIPPED_WEIGHTS

    torch.set_num_threads(args.threads)
    model, cfg, _ = load_model(SHIPPED_WEIGHTS)
    size = cfg.image_size
    root, _ = resolve_data_root(args.data)
    files = calibration_files(root, args.calibration_count)
    # contiguous NCHW, as the test images below: the AOTInductor package is specialised to its
    # example's strides (and torch.compile would compile a second time for other strides)
    feeds = calibration_feeds(files, size, cfg.canny_low, cfg.canny_high)
    t0 = time.perf_counter()
    quantized = quantize_model(model, feeds)
    t1 = time.perf_counter()
    int8 = compile_int8(quantized)
    with flush_denormals():
        int8(*feeds[0])
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        compile_package(quantized, feeds[0], f"{work}/int8.pt2")
        package = torch._inductor.aoti_load_package(f"{work}/int8.pt2")
    t3 = time.perf_counter()
    print(
        f"torch {torch.__version__}, {args.threads} threads; calibration on {len(files)} images "
        f"{t1 - t0:.0f} s, torch.compile {t2 - t1:.0f} s, AOTInductor package {t3 - t2:.0f} s"
    )

    def int8_package(x, c):
        with torch.no_grad():
            return package(x, c)

    bf16 = optimize_for_cpu_inference(
        model
    )  # bfloat16 where the CPU has it: the msrf predict default
    fp32 = model.eval()

    def final_logits(net):
        def run(x, c):
            with torch.inference_mode():
                return net(x, c).final

        return run

    x, c = feeds[1] if len(feeds) > 1 else feeds[0]
    runs = {
        "bfloat16 eager": final_logits(bf16),
        "int8 inductor": int8,
        "int8 package": int8_package,
    }
    with flush_denormals():
        for f in runs.values():
            f(x, c)
        times = alternate(
            {name: (lambda f=f: f(x, c)) for name, f in runs.items()}, args.rounds, args.reps
        )
    base = float(np.median(times["bfloat16 eager"]))
    print(f"\n{'variant':<16} {'median s/img':>12} {'min s/img':>10} {'vs bf16':>8}")
    for name, ts in times.items():
        print(f"{name:<16} {np.median(ts):>12.3f} {min(ts):>10.3f} {base / np.median(ts):>7.2f}×")

    cache = load_or_build_cache(root, "test", size, mask_threshold=cfg.mask_threshold)
    data = MSRFDataset(cache, canny=(cfg.canny_low, cfg.canny_high))
    masks: dict[str, list[np.ndarray]] = {name: [] for name in (*runs, "float32 eager")}
    truths = []
    runs["float32 eager"] = final_logits(fp32)
    with flush_denormals():
        for i in range(len(data)):
            item = data[i]
            xi, ci = item["image"][None].float() / 255, item["canny"][None].float()
            truths.append(item["mask"].numpy()[0].astype(bool))
            for name in masks:
                masks[name].append((runs[name](xi, ci)[0, 0].float() >= 0).numpy())
    truth = np.stack(truths)
    print(f"\ntest split of {root}: {len(data)} images at {size}²")
    for name, m in masks.items():
        dsc = summarize(per_image_table(np.stack(m), truth))["dsc"]
        agree = float(np.mean(np.stack(m) == np.stack(masks["float32 eager"])))
        print(f"{name:<16} mean DSC {dsc:.4f}   mask agreement with float32 {agree:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
