"""The table ``msrf bench`` prints: baseline vs optimized, per image, with the ratios."""

from __future__ import annotations

from typing import Any

__all__ = ["format_table"]


def format_table(r: dict[str, Any]) -> list[str]:
    """The human-readable report: one row per path, then the ratios."""

    def f(v, fmt):
        width = "".join(ch for ch in fmt.split(".")[0] if ch.isdigit())
        return format("—", f">{width}") if v is None else format(v, fmt)

    head = (
        f"MSRF-Net bench on {r['device_name']} ({r['device']}), torch {r['torch']}, "
        f"{r['image_size']}², train batch {r['batch_size']}, infer batch {r['infer_batch_size']}, "
        f"{r['flops_per_img_fwd'] / 1e9:.1f} GFLOP/img forward, "
        f"{r['flops_per_img_train'] / 1e9:.1f} train; measured bf16 matmul peak "
        f"{r['peak_tflops']:.3g} TFLOP/s"
    )
    opt = (
        f"optimized = {r['amp_dtype']}, {'channels-last' if r['channels_last'] else 'NCHW'}, "
        f"{'sub-pixel up-convs, ' if r['subpixel'] else ''}"
        f"{'memory-efficient DSDF, ' if r.get('memory_efficient') else ''}compile: "
        f"{r['compile_status']}"
        f"{', fused Adam' if r['fused_adam'] else ''}"
        f"{', cudnn.benchmark' if r['cudnn_benchmark'] else ''}"
    )
    cols = (
        f"{'path':<10} {'train img/s':>12} {'infer img/s':>12} {'GiB/train img':>14} "
        f"{'train TFLOP/s':>14} {'MFU':>7}"
    )
    lines = [head, opt, cols]
    for name, p in (("baseline", "baseline_"), ("optimized", "")):
        tflops = r[p + "train_tflops"]
        mfu = None if tflops is None else 100 * tflops / r["peak_tflops"]
        lines.append(
            f"{name:<10} {f(r[p + 'train_img_s'], '12.3f')} {f(r[p + 'infer_img_s'], '12.3f')} "
            f"{f(r.get(p + 'peak_gib_per_train_img'), '14.3f')} "
            f"{f(tflops, '14.3f')} {f(mfu, '6.1f')}%"
        )
    lines.append(
        "activation memory kept for the backward pass, per image: "
        f"{f(r.get('saved_gib_per_train_img'), '.3f')} GiB/img optimized vs "
        f"{f(r.get('baseline_saved_gib_per_train_img'), '.3f')} baseline"
    )
    lines.append(
        f"optimized / baseline: train ×{f(r['speedup_train'], '.2f')}, infer "
        f"×{f(r['speedup_infer'], '.2f')}; max |Δ prob| of the final mask "
        f"{f(r['infer_max_prob_diff'], '.1e')}"
    )
    if "data_img_s" in r:
        lines.append(
            f"data pipeline: {r['data_img_s']:.1f} img/s ({r['data_workers']} workers, batch "
            f"{r['data_batch_size']}{', augmented' if r['data_augment'] else ''}) = "
            f"{r['data_over_train']:.1f}× the optimized training rate"
        )
    if r["device"] == "cpu":
        lines.append(
            f"CPU inference, batch {r['infer_batch_size']}, {r['threads']} threads: "
            f"{f(r['infer_s_per_img'], '.3f')} s/img optimized vs "
            f"{f(r['baseline_infer_s_per_img'], '.3f')} s/img baseline (load average "
            f"{f(r['load_avg_1m'], '.1f')}); GPU memory: n/a on the CPU"
        )
    return lines
