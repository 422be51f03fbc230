"""What ``msrf test`` and ``msrf evaluate`` write and print: ``metrics.json`` / ``metrics.csv``, the
best and worst overlays, and the summary table with the paper's four numbers first."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msrfnet.overlay import comparison_panel, encode_png
from msrfnet.safe_output import OutputFolder

__all__ = [
    "N_OVERLAYS",
    "PAPER_METRICS",
    "OTHER_METRICS",
    "OBJECT_METRICS",
    "report_folder",
    "write_outputs",
    "ranked",
    "write_overlays",
    "format_table",
    "format_summary",
    "format_value",
]

N_OVERLAYS = 8

#: The four numbers the paper prints, with the protocol each comes from in the original ``test.py``
#: (spec §3.1): DSC is a per-image mean, the other three are pooled over every test pixel.
PAPER_METRICS: list[tuple[str, str, str]] = [
    ("dsc", "DSC", "per-image mean (paper headline)"),
    ("miou", "mIoU", "pooled pixels, foreground IoU (test.py)"),
    ("recall_global", "recall", "pooled pixels (test.py)"),
    ("precision_global", "precision", "pooled pixels (test.py)"),
]
OTHER_METRICS: list[tuple[str, str, str]] = [
    ("iou", "IoU", "per-image mean"),
    ("recall", "recall", "per-image mean"),
    ("precision", "precision", "per-image mean"),
    ("f2", "F2", "per-image mean"),
    ("accuracy", "accuracy", "per-image mean"),
    ("hd95", "HD95 (px)", "per-image mean where defined"),
    ("hd95_undefined", "HD95 undefined", "images with one mask empty"),
    ("dsc_global", "DSC", "pooled pixels"),
    ("miou_two_class", "mIoU", "pooled, 2-class mean (older code)"),
    ("recall_two_class", "recall", "pooled, 2-class mean (older code)"),
    ("precision_two_class", "precision", "pooled, 2-class mean (older code)"),
]
#: The object metrics (msrfnet.object_metrics) as printed by msrf test and msrf evaluate.
OBJECT_METRICS: list[tuple[str, str, str]] = [
    ("dsb_map", "DSB 2018 score", "per-image mean AP over IoU 0.50:0.95"),
    ("f1_iou50", "F1 @ IoU 0.5", "per-image mean"),
    ("f1_iou50_pooled", "F1 @ IoU 0.5", "pooled object counts"),
    ("precision_iou50", "precision", "pooled, IoU 0.5"),
    ("recall_iou50", "recall", "pooled, IoU 0.5"),
    ("count_error", "count error", "mean |predicted - true| objects"),
    ("count_error_rel", "count error", "mean relative (images with objects)"),
    ("n_pred_objects", "objects", "predicted, all images"),
    ("n_gt_objects", "objects", "true, all images"),
]


# --- writing ------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def write_outputs(target: OutputFolder, result: Mapping[str, Any], rows: list[dict[str, Any]]):
    """``metrics.json`` and ``metrics.csv`` in the output folder (atomically, recorded)."""
    text = (
        json.dumps({k: _json_safe(v) for k, v in result.items()}, indent=1, allow_nan=False) + "\n"
    )
    target.write_text("metrics.json", text)

    buf = io.StringIO()
    columns = list(rows[0]) if rows else ["image"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (
                    ""
                    if isinstance(v, float) and math.isnan(v)
                    else f"{v:.6f}"
                    if isinstance(v, float)
                    else v
                )
                for k, v in row.items()
            }
        )
    target.write_text("metrics.csv", buf.getvalue())


def ranked(rows: list[dict[str, Any]], count: int = N_OVERLAYS) -> tuple[list[int], list[int]]:
    """Indices of the ``count`` best and ``count`` worst images by model-resolution DSC.

    Ties keep file order (the first of equal images ranks higher among the best and among the
    worst).
    """
    best = sorted(range(len(rows)), key=lambda i: (-rows[i]["dsc"], i))[:count]
    worst = sorted(range(len(rows)), key=lambda i: (rows[i]["dsc"], i))[:count]
    return best, worst


def _earlier_panels(root: Path) -> list[str]:
    """The best/worst panels of an earlier report in ``root/overlays``, relative to ``root``."""
    folder = root / "overlays"
    found = [p for pattern in ("best_*.png", "worst_*.png") for p in folder.glob(pattern)]
    return sorted(f"overlays/{p.name}" for p in found)


def report_folder(out: Path, command: str, overwrite: bool) -> OutputFolder:
    """The output folder of ``msrf test`` / ``msrf evaluate``, checked before any work: its
    ``metrics.json``, ``metrics.csv`` and an earlier report's panels are replaced only as
    :class:`~msrfnet.safe_output.OutputFolder` allows (``overwrite``, msrf's own files)."""
    target = OutputFolder(out, command, overwrite=overwrite)
    target.plan([["metrics.json"], ["metrics.csv"], *([n] for n in _earlier_panels(out))])
    return target


def write_overlays(
    target: OutputFolder,
    images: np.ndarray,
    truths: np.ndarray,
    preds: np.ndarray,
    rows: list[dict[str, Any]],
) -> list[Path]:
    """The best/worst comparison panels in ``overlays/``; an earlier test's panels (msrf's, by
    the manifest) are removed first, nothing else is."""
    for name in _earlier_panels(target.root):
        target.remove(name)
    best, worst = ranked(rows)
    written = []
    for kind, order in (("best", best), ("worst", worst)):
        for rank, i in enumerate(order, 1):
            r = rows[i]
            caption = (
                f"{kind} {rank}: {r['stem'][:40]}  DSC {r['dsc']:.3f}  (image | truth | prediction)"
            )
            panel = comparison_panel(images[i], truths[i], preds[i], caption)
            name = f"overlays/{kind}_{rank:02d}_{r['stem']}.png"
            written.append(target.write_bytes(name, encode_png(panel)))
    return written


# --- the printed table --------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A metric as printed: 4 decimals, integers as they are, None/NaN as ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The metrics as text: the paper's four first, then the rest; model vs original resolution."""
    size = result.get("image_size", "S")
    head = f"{'metric':<15} {'protocol':<40} {f'{size}x{size}':>10} {'original':>10}"
    lines = [head, "-" * len(head)]
    for group in (PAPER_METRICS, OTHER_METRICS):
        for key, label, protocol in group:
            lines.append(
                f"{label:<15} {protocol:<40} {format_value(result.get(key)):>10} "
                f"{format_value(result.get(f'orig_{key}')):>10}"
            )
        lines.append("")
    if "dsb_map" in result:  # objects: at the original resolution only
        for key, label, protocol in OBJECT_METRICS:
            lines.append(f"{label:<15} {protocol:<40} {'':>10} {format_value(result.get(key)):>10}")
        lines.append("")
    lines.append(
        f"{result.get('n_images', 0)} images; the paper reports the first four at the model "
        f"resolution (256x256 in the paper; {size}x{size} here)"
    )
    return "\n".join(lines)


def format_summary(result: Mapping[str, Any]) -> str:
    """``msrf evaluate``'s table: the pixel metrics (one column: each image's own size) and, when
    computed, the objects."""

    head = f"{'metric':<16} {'protocol':<52} {'value':>8}"
    lines = [head, "-" * len(head)]
    groups = [PAPER_METRICS, OTHER_METRICS] + (
        [OBJECT_METRICS] if result.get("object_metrics") else []
    )
    for group in groups:
        for key, label, protocol in group:
            lines.append(f"{label:<16} {protocol:<52} {format_value(result.get(key)):>8}")
        lines.append("")
    lines.append(f"{result.get('n_images', 0)} images, at their own size")
    return "\n".join(lines)
