#!/usr/bin/env python3
"""Where the time of the int8 CPU forward goes: inductor's per-kernel profile of
``msrfnet.export.pt2_int8``.

    python benchmarks/cpu_int8_profile.py                  # shipped path (channels-last shuffle)
    python benchmarks/cpu_int8_profile.py --shuffle pixel  # F.pixel_shuffle's order, as before

Calibrates the shipped weights on ``--calibration-count`` images of the bundled sample (or
``--data``), compiles with ``torch.compile`` (frozen weights, one record per generated kernel),
times ``--reps`` forwards (batch 1, 256², 2 threads) and prints the profile of 3 more, sorted by
self time: oneDNN int8 convolutions (``onednn::qconv*``), ``aten::cat``, and the generated
``graph_0_cpp_fused_*`` kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", help="calibration images: a dataset root or folder (default: the bundled sample)"
    )
    ap.add_argument("--calibration-count", type=int, default=4)
    ap.add_argument(
        "--shuffle",
        choices=["rows", "pixel"],
        default="rows",
        help="rows: phase-major weights + view/permute (int8_cpu's choice); pixel: F.pixel_shuffle",
    )
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=30, help="profile rows to print")
    args = ap.parse_args(argv)

    import torch
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    import msrfnet.export.onnx_int8 as quantize
    from msrfnet.accel.cpu import flush_denormals
    from msrfnet.data import sample_root
    from msrfnet.export.pt2_int8 import calibration_feeds, compile_int8, quantize_model
    from msrfnet.model.loading import load_model
    from msrfnet.weights.resolve import SHIPPED_WEIGHTS

    torch.set_num_threads(args.threads)
    inductor_config.cpp.enable_kernel_profile = True
    # the pixel-shuffle form is the ONNX one; quantize_model's default is the channels-last one
    upsampling = "subpixel-onnx" if args.shuffle == "pixel" else "subpixel-inductor"
    model, cfg, _ = load_model(SHIPPED_WEIGHTS)
    files = quantize.calibration_files(
        args.data or sample_root() / "train" / "images", args.calibration_count
    )
    feeds = calibration_feeds(files, cfg.image_size, cfg.canny_low, cfg.canny_high)
    quantized = quantize_model(model, feeds, upsampling)
    run = compile_int8(quantized)
    x, c = feeds[-1]
    with flush_denormals():
        run(x, c)
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            run(x, c)
            times.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                run(x, c)
    times.sort()
    print(
        f"torch {torch.__version__}, {args.threads} threads, shuffle={args.shuffle}, "
        f"{cfg.image_size}², batch 1: median {times[len(times) // 2]:.3f} s, min {times[0]:.3f} s "
        f"over {args.reps} forwards"
    )
    print("profile of 3 forwards (self CPU time; divide by 3 per image):")
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
