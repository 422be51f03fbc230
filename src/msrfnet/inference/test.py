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

The output folder may not be, or lie inside, a folder whose files are read (the split's
``images/`` and ``masks/``, ``instances_gt``); elsewhere in the dataset it may (a run folder in
``<data>/runs`` beside ``train/ val/ test/``, and its ``test/`` report). An earlier test's outputs
are replaced only with ``overwrite`` (``--overwrite``; then its stale panels are removed too); a
file msrf did not write is never replaced or removed (:mod:`msrfnet.safe_output`).

Plan, then run: :func:`plan_test` decides what is read, computed and written without a model
(:class:`SplitPlan`), :func:`run_split` runs a :class:`~msrfnet.inference.segmenter.Segmenter` over
it; :func:`test` does both from the option groups of :mod:`msrfnet.option_groups`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from msrfnet.data import MSRFDataset, load_or_build_cache, read_image, read_mask, resolve_data_root
from msrfnet.data.files import Pair, files_by_stem
from msrfnet.data.io import read_labels
from msrfnet.data.layout import split_dir, split_pairs
from msrfnet.errors import MSRFError
from msrfnet.inference.instances import split_instances
from msrfnet.inference.report import format_table, report_folder, write_outputs, write_overlays
from msrfnet.inference.runners import to_original_size
from msrfnet.inference.segmenter import Segmenter
from msrfnet.metrics import per_image_table, summarize
from msrfnet.object_metrics import object_scores, summarize_objects
from msrfnet.option_groups import ModelSource, Objects, Tiling
from msrfnet.options import check_inference_memory
from msrfnet.safe_output import OutputFolder, refuse_collisions
from msrfnet.weights.resolve import run_dir_of

__all__ = [
    "DEFAULT_OUT",
    "SPLIT",
    "SplitPlan",
    "default_out",
    "instance_truth_folder",
    "plan_test",
    "open_segmenter",
    "check_memory",
    "run_split",
    "test",
]

log = logging.getLogger("msrfnet")

DEFAULT_OUT = Path("msrf-test")
SPLIT = "test"  #: the split msrf test reads
TILES_PER_CALL = 8  #: tiled: windows of one test image per model call

_ROW_KEYS = ("tp", "fp", "fn", "tn", "dsc", "iou", "precision", "recall", "f2", "accuracy", "hd95")


def default_out(weights: Path) -> Path:
    """``<run dir>/test`` when the weights belong to a run directory, else ``./msrf-test``."""
    run = run_dir_of(weights)
    return run / "test" if run is not None else DEFAULT_OUT


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """What one ``msrf test`` reads, computes and writes, decided before the model runs."""

    root: Path  #: the dataset
    pairs: tuple[Pair, ...]  #: the split's images and masks, sorted by stem (the cache's order)
    inputs: tuple[Path, ...]  #: the folders whose files are read: never written into
    target: OutputFolder  #: the report folder, checked: what it holds may be replaced
    mask_suffix: str = ""  #: a mask's stem is its image's plus this
    batch_size: int = 8  #: test images per model call
    #: None: the paper's resize protocol; else each image tiled whole, ``{tile, overlap, scale}``
    tiling: dict[str, Any] | None = None
    objects: Objects | None = None  #: object metrics: how a prediction splits into objects
    instances_gt: Path | None = None  #: with ``objects``: the folder of instance label images
    labels: dict[str, Path] = field(default_factory=dict)  #: each stem's label image
    split: str = SPLIT

    @property
    def out(self) -> Path:
        return self.target.root


def instance_truth_folder(objects: Objects | None, instances_gt: str | Path | None) -> Path | None:
    """The folder of instance label images that object metrics (``objects``) need, checked;
    None without ``objects``."""
    if objects is None:
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
    return gt


def _instance_truths(folder: Path, stems: list[str]) -> dict[str, Path]:
    """The label image of every test stem in ``folder``; one line naming the first missing."""
    files, _, _ = files_by_stem(folder)
    missing = [s for s in stems if s not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MSRFError(f"--instances-gt {folder}: no label image with stem {missing[0]!r}{more}")
    return files


def plan_test(
    root: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    mask_suffix: str = "",
    batch_size: int = 8,
    tiling: dict[str, Any] | None = None,
    objects: Objects | None = None,
    instances_gt: str | Path | None = None,
) -> SplitPlan:
    """The plan of a test of the dataset ``root`` into ``out``, from the files alone (no model):
    the split's pairs; ``out`` refused when it is, or lies inside, a folder read; its earlier
    outputs replaced only with ``overwrite``; with ``objects``, every test stem's label image
    in ``instances_gt``. ``batch_size`` is :class:`~msrfnet.option_groups.ModelSource`'s,
    ``tiling`` the Segmenter's (:attr:`~msrfnet.inference.segmenter.Segmenter.tiling`).

    Raises:
        MSRFError: a missing split or pairing problem, an output folder among the inputs or
            holding files that may not be replaced, missing instance labels (each named).
    """
    root = Path(root)
    gt = instance_truth_folder(objects, instances_gt)
    pairs = tuple(split_pairs(root, SPLIT, mask_suffix))
    folder = split_dir(root, SPLIT)
    inputs = (folder / "images", folder / "masks", *([gt] if gt is not None else []))
    refuse_collisions(out, input_folders=inputs)  # the files read all lie in these folders
    target = report_folder(Path(out), "msrf test", overwrite)
    labels = _instance_truths(gt, [p.stem for p in pairs]) if gt is not None else {}
    return SplitPlan(
        root, pairs, inputs, target, mask_suffix, batch_size, tiling, objects, gt, labels
    )


# --- the run ------------------------------------------------------------------------------------


def open_segmenter(model: ModelSource, tiling: Tiling) -> Segmenter:
    """The Segmenter of ``model`` (no ``weights``: the newest run in ``./runs``, else the shipped
    weights) tiled as ``tiling`` asks (native-scale weights tile by themselves)."""
    if model.tta:
        raise MSRFError("tta: msrf test scores the model as it is, without flip averaging")
    return Segmenter.open(model=model, tiling=tiling, prefer_runs=True)


def check_memory(plan: SplitPlan, seg: Segmenter, device: str | None = None) -> None:
    """Refuse, before the cache is built and the arrays allocated, a model input this machine
    cannot hold: ``batch_size`` test images of the model's size at once, or one image's windows
    (:data:`TILES_PER_CALL` at a time) when tiling."""
    if plan.tiling is None:
        check_inference_memory(seg.image_size, plan.batch_size, "--image-size", device)
    else:
        check_inference_memory(seg.tile_size, TILES_PER_CALL, "--tile", device)


def _cache_dir(cfg) -> str | None:
    # a cache folder recorded on another machine would not exist here: fall back to the default
    return cfg.cache_dir if cfg.cache_dir and Path(cfg.cache_dir).is_dir() else None


def run_split(plan: SplitPlan, seg: Segmenter) -> dict[str, Any]:
    """Run ``seg`` (made by :meth:`Segmenter.open`: it knows its checkpoint's config) over the
    plan's split, at its image size and threshold, and write the report (see the module
    docstring). Returns the ``metrics.json`` object (NaN kept as float NaN); the summary table
    is logged (INFO)."""
    if plan.tiling != seg.tiling:
        raise ValueError(f"plan for tiling {plan.tiling}, Segmenter tiling {seg.tiling}")
    cfg, size = seg.config, seg.image_size
    cache = load_or_build_cache(
        plan.root,
        plan.split,
        size,
        mask_threshold=cfg.mask_threshold,
        cache_dir=_cache_dir(cfg),
        mask_suffix=plan.mask_suffix,
        normalize=cfg.normalize,
    )
    dataset = MSRFDataset(cache, canny=(cfg.canny_low, cfg.canny_high))
    log.info(f"test split: {len(dataset)} images at {size}×{size}, threshold {seg.threshold}")
    rows, truths, preds = _score(plan, seg, dataset)
    result = _result(plan, seg, rows)
    write_outputs(plan.target, result, rows)
    write_overlays(plan.target, np.asarray(cache.images), truths, preds, rows)
    log.info(format_table(result))
    log.info(f"results: {plan.out}/ (metrics.json, metrics.csv, overlays/)")
    return result


def _score(plan: SplitPlan, seg: Segmenter, dataset: MSRFDataset):
    """(one row per image, the S×S truths, the S×S predictions), a batch of images at a time."""
    from tqdm import tqdm

    n, size, step = len(dataset), seg.image_size, plan.batch_size
    preds = np.zeros((n, size, size), bool)
    truths = np.zeros((n, size, size), bool)
    rows: list[dict[str, Any]] = []
    batches = [range(i, min(i + step, n)) for i in range(0, n, step)]
    quiet = len(batches) <= 1 or not log.isEnabledFor(logging.INFO)
    for batch in tqdm(batches, disable=quiet, unit="batch", desc="msrf test"):
        items = [dataset[i] for i in batch]
        if plan.tiling is None:
            images = np.stack([it["image"].numpy() for it in items])
            canny = np.stack([it["canny"].numpy() for it in items])
            probs, tiled = seg.model_probabilities(images, canny), [None] * len(items)
        else:  # each image whole from its file, tiled; shrunk to S×S for the model-size column
            tiled = [_tiled_probability(seg, dataset.source(i)) for i in batch]
            probs = np.stack(
                [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in tiled]
            )
        at = slice(batch.start, batch.stop)
        truths[at] = np.stack([it["mask"].numpy()[0] for it in items]).astype(bool)
        preds[at] = probs >= seg.threshold
        model_rows = per_image_table(preds[at], truths[at])
        for i, prob, model_row, tiled_prob in zip(batch, probs, model_rows, tiled):
            full_prob = tiled_prob
            if full_prob is None:
                src = dataset.source(i)
                full_prob = to_original_size(prob, src.height, src.width)
            rows.append(_row(plan, seg, dataset, i, model_row, full_prob))
    return rows, truths, preds


def _row(plan: SplitPlan, seg: Segmenter, dataset: MSRFDataset, i: int, model_row, full_prob):
    """One image's CSV row: its model-resolution metrics, those of ``full_prob`` (its
    probabilities at its original size) against its mask file, and with objects theirs."""
    src = dataset.source(i)
    truth = read_mask(
        src.mask_path, mask_threshold=seg.config.mask_threshold, name=dataset.mask_files[i]
    )
    orig_row = per_image_table((full_prob >= seg.threshold)[None], truth[None])[0]
    row = {
        "image": dataset.image_files[i],
        "stem": src.stem,
        "height": src.height,
        "width": src.width,
        **{k: model_row[k] for k in _ROW_KEYS},
        **{f"orig_{k}": orig_row[k] for k in _ROW_KEYS},
    }
    if plan.objects is not None:
        row.update(_object_row(full_prob, seg.threshold, plan.labels[src.stem], plan.objects))
    return row


def _result(plan: SplitPlan, seg: Segmenter, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``metrics.json`` object: the summaries at both resolutions and what was compared."""
    model = summarize([{k: r[k] for k in _ROW_KEYS} for r in rows])
    orig = summarize([{k: r[f"orig_{k}"] for k in _ROW_KEYS} for r in rows])
    result: dict[str, Any] = dict(model)
    result.update({f"orig_{k}": v for k, v in orig.items()})
    result.update(
        n_images=len(rows),
        image_size=seg.image_size,
        threshold=seg.threshold,
        weights=str(seg.weights),
        data=str(plan.root),
        variant=seg.config.variant,
        numerics=seg.runner.numerics,
    )
    if plan.tiling is not None:
        result.update(protocol="tiled", **plan.tiling)
    if plan.objects is not None:
        result.update(summarize_objects(rows))
        result.update(
            instances_gt=str(plan.instances_gt),
            min_size=plan.objects.min_size,
            seed_distance=plan.objects.seed_distance,
        )
    return result


def _tiled_probability(seg: Segmenter, source) -> np.ndarray:
    """The tiled probability map of one test image, read from its file."""
    rgb = read_image(source.image_path, normalize=seg.normalize)
    return seg.probabilities([rgb], batch_size=TILES_PER_CALL)[0]


def _object_row(prob: np.ndarray, threshold: float, path: Path, objects: Objects) -> dict:
    """One test image's object metrics: its probabilities split into objects, against its
    instance label image ``path``."""
    truth = read_labels(path)
    if truth.shape != prob.shape:
        raise MSRFError(
            f"{path}: {truth.shape[1]}×{truth.shape[0]} pixels, the test image "
            f"{prob.shape[1]}×{prob.shape[0]}"
        )
    labels = split_instances(
        prob, threshold, min_size=objects.min_size, seed_distance=objects.seed_distance
    )
    return object_scores(labels, truth)


# --- the entry point ----------------------------------------------------------------------------


def test(
    data: str | Path | None = None,
    *,
    model: ModelSource = ModelSource(),
    tiling: Tiling = Tiling(),
    objects: Objects | None = None,
    instances_gt: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    mask_suffix: str | None = None,
) -> dict[str, Any]:
    """``msrf test`` from Python: the test split of ``data`` (None: ``./data/kdsb``, else the
    bundled sample) through ``model`` (:func:`open_segmenter`), planned (:func:`plan_test`) and
    run (:func:`run_split`). ``objects`` adds object metrics against the label images of
    ``instances_gt``; ``out`` defaults to ``<run dir>/test`` for weights inside a run
    directory, else ``./msrf-test``; ``mask_suffix`` to the checkpoint's. Returns the
    ``metrics.json`` object; the weights, the data and the summary table are logged (INFO).

    Raises:
        MSRFError: missing/unreadable weights or data files (named), bad options, an output
            folder among the inputs or holding outputs that may not be replaced, an I/O error.
    """
    instance_truth_folder(objects, instances_gt)  # before the model loads
    seg = open_segmenter(model, tiling)
    root, message = resolve_data_root(data)
    log.info(message)
    plan = plan_test(
        root,
        default_out(seg.weights) if out is None else out,
        overwrite=overwrite,
        mask_suffix=seg.config.mask_suffix if mask_suffix is None else mask_suffix,
        batch_size=model.batch_size,
        tiling=seg.tiling,
        objects=objects,
        instances_gt=instances_gt,
    )
    exported = model.onnx is not None or model.pt2 is not None
    check_memory(plan, seg, None if exported else model.device)
    return run_split(plan, seg)


test.__test__ = False  # a function named test: not one for pytest to collect where imported
