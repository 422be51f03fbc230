"""``msrf test``: metrics on a dataset's test split, at two resolutions, with tables and overlays.

Two protocols, side by side (definitions and empty-mask policy: :mod:`msrfnet.metrics`):

* **model resolution** — the paper's protocol (spec §2.6): the prediction at S×S against the
  binarised S×S mask of the cache (the resized grey mask ≥ 128, exactly the training target);
* **original resolution** — what a user of the masks gets: the S×S probability map resized back
  to the image's original H×W (OpenCV bilinear) and then thresholded, against the mask file read
  from disk and binarised as the data package does.

The model input is the training pre-processing (Lanczos resize, /255, Canny with the
checkpoint's thresholds), read from the data package's cache at the test image size.

Output folder (default ``<run dir>/test`` for weights inside a run directory, else ``./msrf-test``):

* ``metrics.json`` — one flat object: :func:`msrfnet.metrics.summarize`'s keys at model resolution
  (``dsc`` is the paper's headline, the mean per-image DSC), the same keys prefixed ``orig_`` at
  original resolution, and ``n_images``, ``image_size``, ``threshold``, ``weights``, ``data``,
  ``variant``, ``numerics`` (float32, or bfloat16 on a CPU with native bf16 unless ``--exact``,
  or on CUDA). Undefined values (NaN, e.g. HD95 when every prediction is empty) are ``null``;
* ``metrics.csv`` — one row per image: file, original size, the per-image metrics at model
  resolution, then the same prefixed ``orig_``;
* ``overlays/best_01_<stem>.png`` … and ``worst_01_<stem>.png`` … — the 8 best and 8 worst images
  by model-resolution DSC (fewer for smaller test sets): image | truth (green) | prediction
  (magenta, with the truth's outline in green), at model resolution, enlarged to ≥ 256 px.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .checkpoint import atomic_write
from .errors import MSRFError
from .predict import (
    PRED_COLOR,
    TRUTH_COLOR,
    check_image_size,
    check_threshold,
    draw_overlay,
    load_torch_runner,
    to_original_size,
    write_png,
)
from .weights_resolve import run_dir_of

N_OVERLAYS = 8
DEFAULT_OUT = Path("msrf-test")

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
_ROW_KEYS = ("tp", "fp", "fn", "tn", "dsc", "iou", "precision", "recall", "f2", "accuracy", "hd95")


def default_out(weights: Path) -> Path:
    """``<run dir>/test`` when the weights belong to a run directory, else ``./msrf-test``."""
    run = run_dir_of(weights)
    return run / "test" if run is not None else DEFAULT_OUT


def _cache_dir(cfg) -> str | None:
    # a cache folder recorded on another machine would not exist here: fall back to the default
    return cfg.cache_dir if cfg.cache_dir and Path(cfg.cache_dir).is_dir() else None


def run_test(
    data: str | Path | None = None,
    weights: str | Path | None = None,
    image_size: int | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    threshold: float = 0.5,
    echo: Callable[[str], object] | None = print,
    exact: bool = False,
    onnx: str | Path | None = None,
    pt2: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``weights`` on the test split of ``data`` (see the module docstring); ``exact``
    runs float32 on a CPU that would otherwise use the bfloat16 fast path; ``onnx`` evaluates an
    exported (float32 or int8) model through onnxruntime instead, with the image size and Canny
    thresholds of its metadata; ``pt2`` likewise an int8 AOTInductor package (``msrf export
    --int8 --out X.pt2``).

    Returns the ``metrics.json`` object (NaN kept as float NaN).

    Raises:
        MSRFError: missing/unreadable weights or data files (named), bad options.
    """
    from tqdm import tqdm

    from .data import MSRFDataset, load_or_build_cache, read_mask, resolve_data_root
    from .metrics import per_image_table, summarize

    say = echo or (lambda _line: None)
    check_threshold(threshold)
    if batch_size < 1:
        raise MSRFError(f"batch size {batch_size}: must be at least 1")
    if image_size is not None:
        check_image_size(image_size)
    if onnx is not None or pt2 is not None:
        from .config import Config
        from .predict import _open_backend

        runner, onnx_size, (low, high) = _open_backend(weights, onnx, image_size, echo, pt2=pt2)
        path = Path(onnx if onnx is not None else pt2)
        cfg = Config(image_size=onnx_size, canny_low=low, canny_high=high,
                     variant=runner.metadata.get("variant", "official"))
    else:
        runner, path, cfg = load_torch_runner(weights, prefer_runs=True, echo=echo, exact=exact)
    size = check_image_size(image_size or cfg.image_size, "image size")
    root, message = resolve_data_root(data)
    say(message)
    cache = load_or_build_cache(root, "test", size, mask_threshold=cfg.mask_threshold, cache_dir=_cache_dir(cfg))
    dataset = MSRFDataset(cache, canny=(cfg.canny_low, cfg.canny_high))
    n = len(dataset)
    say(f"test split: {n} images at {size}×{size}, threshold {threshold}")

    preds = np.zeros((n, size, size), bool)
    truths = np.zeros((n, size, size), bool)
    rows: list[dict[str, Any]] = []
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    for batch in tqdm(batches, disable=len(batches) <= 1 or echo is None, unit="batch", desc="msrf test"):
        items = [dataset[i] for i in batch]
        images = np.stack([it["image"].numpy() for it in items])
        canny = np.stack([it["canny"].numpy() for it in items])
        probs = runner(images, canny)
        truths[batch.start:batch.stop] = np.stack([it["mask"].numpy()[0] for it in items]).astype(bool)
        preds[batch.start:batch.stop] = probs >= threshold
        model_rows = per_image_table(preds[batch.start:batch.stop], truths[batch.start:batch.stop])
        for i, prob, model_row in zip(batch, probs, model_rows):
            src = dataset.source(i)
            truth = read_mask(src.mask_path, mask_threshold=cfg.mask_threshold, name=dataset.mask_files[i])
            full = to_original_size(prob, src.height, src.width) >= threshold
            orig_row = per_image_table(full[None], truth[None])[0]
            rows.append({"image": dataset.image_files[i], "stem": src.stem, "height": src.height, "width": src.width,
                         **{k: model_row[k] for k in _ROW_KEYS}, **{f"orig_{k}": orig_row[k] for k in _ROW_KEYS}})

    model = summarize([{k: r[k] for k in _ROW_KEYS} for r in rows])
    orig = summarize([{k: r[f"orig_{k}"] for k in _ROW_KEYS} for r in rows])
    result: dict[str, Any] = dict(model)
    result.update({f"orig_{k}": v for k, v in orig.items()})
    result.update(n_images=n, image_size=size, threshold=threshold, weights=str(path), data=str(root), variant=cfg.variant,
                  numerics=runner.numerics)

    out = Path(out) if out is not None else default_out(path)
    write_outputs(out, result, rows)
    write_overlays(out / "overlays", np.asarray(cache.images), truths, preds, rows)
    say(format_table(result))
    say(f"results: {out}/ (metrics.json, metrics.csv, overlays/)")
    return result


# --- writing ------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def write_outputs(out: Path, result: Mapping[str, Any], rows: list[dict[str, Any]]) -> None:
    """``metrics.json`` and ``metrics.csv`` in ``out`` (written atomically)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MSRFError(f"{out}: cannot create the output folder ({e.strerror or e})") from e
    text = json.dumps({k: _json_safe(v) for k, v in result.items()}, indent=1, allow_nan=False) + "\n"
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text))

    buf = io.StringIO()
    columns = list(rows[0]) if rows else ["image"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else f"{v:.6f}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    atomic_write(out / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))


def ranked(rows: list[dict[str, Any]], count: int = N_OVERLAYS) -> tuple[list[int], list[int]]:
    """Indices of the ``count`` best and ``count`` worst images by model-resolution DSC.

    Ties keep file order (the first of equal images ranks higher among the best and among the worst).
    """
    best = sorted(range(len(rows)), key=lambda i: (-rows[i]["dsc"], i))[:count]
    worst = sorted(range(len(rows)), key=lambda i: (rows[i]["dsc"], i))[:count]
    return best, worst


def comparison_panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, caption: str, min_side: int = 256) -> np.ndarray:
    """image | truth | prediction, enlarged (nearest) to at least ``min_side`` px, with a caption."""
    f = max(1, math.ceil(min_side / max(1, min(image.shape[:2]))))
    big = lambda a: np.repeat(np.repeat(a, f, axis=0), f, axis=1)  # noqa: E731
    img, gt, pr = big(image), big(truth), big(pred)
    panels = [img, draw_overlay(img, gt, TRUTH_COLOR), draw_overlay(img, pr, PRED_COLOR, outline=gt)]
    gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
    body = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    strip = np.zeros((22, body.shape[1], 3), np.uint8)
    cv2.putText(strip, caption, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, body], axis=0)


def write_overlays(folder: Path, images: np.ndarray, truths: np.ndarray, preds: np.ndarray, rows: list[dict[str, Any]]) -> list[Path]:
    """The best/worst comparison panels; panels of an earlier test in ``folder`` are replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("best_*.png"), *folder.glob("worst_*.png")]:
        old.unlink(missing_ok=True)
    best, worst = ranked(rows)
    written = []
    for kind, order in (("best", best), ("worst", worst)):
        for rank, i in enumerate(order, 1):
            r = rows[i]
            caption = f"{kind} {rank}: {r['stem'][:40]}  DSC {r['dsc']:.3f}  (image | truth | prediction)"
            panel = comparison_panel(images[i], truths[i], preds[i], caption)
            written.append(write_png(folder / f"{kind}_{rank:02d}_{r['stem']}.png", panel))
    return written


# --- the printed table --------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The metrics as text: the paper's four first, then the rest; model vs original resolution."""
    size = result.get("image_size", "S")
    head = (f"{'metric':<15} {'protocol':<40} {f'{size}x{size}':>10} {'original':>10}")
    lines = [head, "-" * len(head)]
    for group in (PAPER_METRICS, OTHER_METRICS):
        for key, label, protocol in group:
            lines.append(f"{label:<15} {protocol:<40} {_fmt(result.get(key)):>10} {_fmt(result.get(f'orig_{key}')):>10}")
        lines.append("")
    lines.append(f"{result.get('n_images', 0)} images; the paper reports the first four at the model resolution (256x256 in the paper; {size}x{size} here)")
    return "\n".join(lines)
