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
* with ``instances`` (``--instances --instances-gt DIR``): the object metrics of
  :mod:`msrfnet.object_metrics` (``dsb_map``, ``f1_iou50``, ``count_error``, …; per image in the
  CSV, summarised in the JSON) at original resolution: each probability map, resized back,
  split into objects (:func:`~msrfnet.inference.instances.split_instances`), against the label
  image of the same stem in ``instances_gt`` (one value per object, e.g. uint16 PNGs);
* ``overlays/best_01_<stem>.png`` … and ``worst_01_<stem>.png`` … — the 8 best and 8 worst images
  by model-resolution DSC (fewer for smaller test sets): image | truth (green) | prediction
  (magenta, with the truth's outline in green), at model resolution, enlarged to ≥ 256 px.

The output folder may not lie inside the dataset, and an earlier test's outputs are replaced only
with ``overwrite`` (``--overwrite``; then its stale panels are removed too); a file msrf did not
write is never replaced or removed (:mod:`msrfnet.safe_output`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from msrfnet.data import MSRFDataset, load_or_build_cache, read_image, read_mask, resolve_data_root
from msrfnet.data.files import files_by_stem
from msrfnet.data.io import read_labels
from msrfnet.errors import MSRFError
from msrfnet.inference.instances import (
    MIN_SIZE,
    SEED_DISTANCE,
    check_instance_options,
    split_instances,
)
from msrfnet.inference.report import (  # noqa: F401 - re-exported: part of msrf test's API
    N_OVERLAYS,
    OBJECT_METRICS,
    OTHER_METRICS,
    PAPER_METRICS,
    format_table,
    ranked,
    report_folder,
    write_outputs,
    write_overlays,
)
from msrfnet.inference.runners import to_original_size
from msrfnet.inference.segmenter import Segmenter
from msrfnet.inference.tiling import check_tiling
from msrfnet.metrics import per_image_table, summarize
from msrfnet.object_metrics import object_scores
from msrfnet.options import check_image_size, check_threshold
from msrfnet.safe_output import refuse_inside_inputs
from msrfnet.weights.resolve import run_dir_of

__all__ = [
    "N_OVERLAYS",
    "DEFAULT_OUT",
    "PAPER_METRICS",
    "OTHER_METRICS",
    "OBJECT_METRICS",
    "default_out",
    "run_test",
    "write_outputs",
    "ranked",
    "write_overlays",
    "format_table",
]

log = logging.getLogger("msrfnet")

DEFAULT_OUT = Path("msrf-test")

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
    exact: bool = False,
    onnx: str | Path | None = None,
    pt2: str | Path | None = None,
    overwrite: bool = False,
    instances: bool = False,
    instances_gt: str | Path | None = None,
    min_size: int | None = None,
    seed_distance: int | None = None,
    mask_suffix: str | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    scale: float | None = None,
    device: str | None = "auto",
) -> dict[str, Any]:
    """Evaluate ``weights`` on the test split of ``data`` (see the module docstring); ``exact``
    runs float32 on a CPU that would otherwise use the bfloat16 fast path; ``onnx`` evaluates an
    exported (float32 or int8) model through onnxruntime instead, with the image size and Canny
    thresholds of its metadata; ``mask_suffix`` pairs masks named ``<stem><suffix>`` (default:
    the checkpoint's); ``pt2`` likewise an int8 AOTInductor package (``msrf export
    --int8 --out X.pt2``). The model runs through :class:`~msrfnet.inference.segmenter.Segmenter`
    on ``device`` (auto, cpu, cuda, cuda:N or mps).

    Tiled (``tile`` / ``scale``, or weights trained at native scale, which tile at their patch
    size and scale by themselves): each test image is predicted whole by
    :func:`msrfnet.inference.tiling.predict_tiled` from its file; the original-resolution
    columns score that map, the model-resolution ones the map shrunk to S×S (area average)
    against the cached S×S mask, comparable with the resize protocol's.

    Returns the ``metrics.json`` object (NaN kept as float NaN); the summary table, the weights
    and the data used are logged (INFO).

    Raises:
        MSRFError: missing/unreadable weights or data files (named), bad options, an output folder
            inside the dataset or holding outputs that may not be replaced, an I/O error.
    """
    from tqdm import tqdm

    check_threshold(threshold)
    if batch_size < 1:
        raise MSRFError(f"batch size {batch_size}: must be at least 1")
    if image_size is not None:
        check_image_size(image_size)
    objects = _instance_options(instances, instances_gt, min_size, seed_distance)
    request = check_tiling(tile, overlap, scale)
    seg = Segmenter.open(
        weights,
        onnx=onnx,
        pt2=pt2,
        device=device,
        exact=exact,
        image_size=image_size,
        prefer_runs=True,
        threshold=threshold,
        **request,
    )
    runner, path, cfg = seg.runner, seg.weights, seg.config
    size = seg.image_size
    tiling = seg.tiling
    root, message = resolve_data_root(data)
    log.info(message)
    out = Path(out) if out is not None else default_out(path)
    refuse_inside_inputs(out, [root])
    target = report_folder(out, "msrf test", overwrite)
    cache = load_or_build_cache(
        root,
        "test",
        size,
        mask_threshold=cfg.mask_threshold,
        cache_dir=_cache_dir(cfg),
        mask_suffix=cfg.mask_suffix if mask_suffix is None else mask_suffix,
        normalize=cfg.normalize,
    )
    dataset = MSRFDataset(cache, canny=(cfg.canny_low, cfg.canny_high))
    n = len(dataset)
    log.info(f"test split: {n} images at {size}×{size}, threshold {threshold}")
    if objects is not None:
        objects["files"] = _instance_truths(objects["gt"], [dataset.source(i) for i in range(n)])

    preds = np.zeros((n, size, size), bool)
    truths = np.zeros((n, size, size), bool)
    rows: list[dict[str, Any]] = []
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    for batch in tqdm(
        batches,
        disable=len(batches) <= 1 or not log.isEnabledFor(logging.INFO),
        unit="batch",
        desc="msrf test",
    ):
        items = [dataset[i] for i in batch]
        images = np.stack([it["image"].numpy() for it in items])
        canny = np.stack([it["canny"].numpy() for it in items])
        if tiling is None:
            probs, tiled = seg.model_probabilities(images, canny), [None] * len(items)
        else:  # each image whole from its file, tiled; shrunk to S×S for the model-size column
            tiled = [_tiled_probability(seg, dataset.source(i)) for i in batch]
            probs = np.stack(
                [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in tiled]
            )
        truths[batch.start : batch.stop] = np.stack([it["mask"].numpy()[0] for it in items]).astype(
            bool
        )
        preds[batch.start : batch.stop] = probs >= threshold
        model_rows = per_image_table(
            preds[batch.start : batch.stop], truths[batch.start : batch.stop]
        )
        for i, prob, model_row, tiled_prob in zip(batch, probs, model_rows, tiled):
            src = dataset.source(i)
            truth = read_mask(
                src.mask_path, mask_threshold=cfg.mask_threshold, name=dataset.mask_files[i]
            )
            full_prob = (
                to_original_size(prob, src.height, src.width) if tiled_prob is None else tiled_prob
            )
            full = full_prob >= threshold
            orig_row = per_image_table(full[None], truth[None])[0]
            rows.append(
                {
                    "image": dataset.image_files[i],
                    "stem": src.stem,
                    "height": src.height,
                    "width": src.width,
                    **{k: model_row[k] for k in _ROW_KEYS},
                    **{f"orig_{k}": orig_row[k] for k in _ROW_KEYS},
                }
            )
            if objects is not None:
                rows[-1].update(_object_row(full_prob, threshold, src.stem, objects))

    model = summarize([{k: r[k] for k in _ROW_KEYS} for r in rows])
    orig = summarize([{k: r[f"orig_{k}"] for k in _ROW_KEYS} for r in rows])
    result: dict[str, Any] = dict(model)
    result.update({f"orig_{k}": v for k, v in orig.items()})
    result.update(
        n_images=n,
        image_size=size,
        threshold=threshold,
        weights=str(path),
        data=str(root),
        variant=cfg.variant,
        numerics=runner.numerics,
    )
    if tiling is not None:
        result.update(protocol="tiled", **tiling)
    if objects is not None:
        from msrfnet.object_metrics import summarize_objects

        result.update(summarize_objects(rows))
        result.update(
            instances_gt=str(objects["gt"]),
            min_size=objects["min_size"],
            seed_distance=objects["seed_distance"],
        )

    write_outputs(target, result, rows)
    write_overlays(target, np.asarray(cache.images), truths, preds, rows)
    log.info(format_table(result))
    log.info(f"results: {out}/ (metrics.json, metrics.csv, overlays/)")
    return result


# --- tiled (native scale) -----------------------------------------------------------------------


def _tiled_probability(seg: Segmenter, source) -> np.ndarray:
    """The tiled probability map of one test image, read from its file."""

    return seg.probabilities([read_image(source.image_path, normalize=seg.normalize)])[0]


# --- objects (--instances) ----------------------------------------------------------------------


def _instance_options(instances, instances_gt, min_size, seed_distance) -> dict[str, Any] | None:
    """The checked object options of ``msrf test --instances``, None without ``instances``."""

    if not instances:
        if instances_gt is not None:
            raise MSRFError("--instances-gt: pass --instances too (object metrics)")
        return None
    if instances_gt is None:
        raise MSRFError(
            "--instances: pass --instances-gt DIR, a folder of instance label images paired with "
            "the test images by stem (0 = background, one value per object)"
        )
    gt = Path(instances_gt)
    if not gt.is_dir():
        raise MSRFError(f"--instances-gt {gt}: no such folder")
    sizes = check_instance_options(
        MIN_SIZE if min_size is None else min_size,
        SEED_DISTANCE if seed_distance is None else seed_distance,
    )
    return {"gt": gt, "min_size": sizes[0], "seed_distance": sizes[1]}


def _instance_truths(folder: Path, sources) -> dict[str, Path]:
    """The label image of every test stem in ``folder``; one line naming the first missing."""

    files, _, _ = files_by_stem(folder)
    missing = [s.stem for s in sources if s.stem not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MSRFError(f"--instances-gt {folder}: no label image with stem {missing[0]!r}{more}")
    return files


def _object_row(prob: np.ndarray, threshold: float, stem: str, objects: dict) -> dict[str, Any]:
    """One test image's object metrics: its probabilities split into objects, against its
    instance labels."""

    path = objects["files"][stem]
    truth = read_labels(path)
    if truth.shape != prob.shape:
        raise MSRFError(
            f"{path}: {truth.shape[1]}×{truth.shape[0]} pixels, the test image "
            f"{prob.shape[1]}×{prob.shape[0]}"
        )
    labels = split_instances(
        prob, threshold, min_size=objects["min_size"], seed_distance=objects["seed_distance"]
    )
    return object_scores(labels, truth)
