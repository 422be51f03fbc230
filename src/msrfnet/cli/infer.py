"""``msrf test``, ``msrf predict`` and ``msrf evaluate``: the inference commands, thin layers over
:mod:`msrfnet.inference` (whose :class:`~msrfnet.inference.segmenter.Segmenter` runs the model)."""

from __future__ import annotations

import argparse
import sys

from msrfnet import options as opt
from msrfnet.cli.flags import (
    add_device_flags,
    add_instance_flags,
    add_model_flags,
    add_tiling_flags,
)
from msrfnet.option_groups import ModelSource, Objects, Outputs, Tiling

__all__ = [
    "add_test",
    "add_predict",
    "add_evaluate",
    "cmd_test",
    "cmd_predict",
    "cmd_evaluate",
    "model_source",
    "tiling",
    "objects",
    "outputs",
]


def model_source(args: argparse.Namespace) -> ModelSource:
    """The model flags (add_model_flags, add_device_flags, --batch-size, --tta) as a group."""
    return ModelSource(
        weights=args.weights,
        onnx=args.onnx,
        pt2=args.pt2,
        device=args.device,
        exact=args.exact,
        image_size=args.image_size,
        threshold=args.threshold,
        tta=getattr(args, "tta", False),
        batch_size=args.batch_size,
    )


def tiling(args: argparse.Namespace) -> Tiling:
    """--tile, --overlap, --scale as a group."""
    return Tiling(tile=args.tile, overlap=args.overlap, scale=args.scale)


def objects(args: argparse.Namespace) -> Objects | None:
    """--min-size, --seed-distance as a group with --instances, else None."""
    return Objects(args.min_size, args.seed_distance) if args.instances else None


def cmd_test(args: argparse.Namespace) -> int:
    from msrfnet.inference.test import test

    test(
        args.data,
        model=model_source(args),
        tiling=tiling(args),
        objects=objects(args),
        instances_gt=args.instances_gt,
        out=args.out,
        overwrite=args.overwrite,
        mask_suffix=args.mask_suffix,
    )
    return 0


def outputs(args: argparse.Namespace) -> Outputs:
    """msrf predict's --out, --overlay, --probabilities, --overwrite, --skip-existing, --strict,
    --recursive as a group."""
    return Outputs(
        out=args.out,
        overlay=args.overlay,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        skip_existing=args.skip_existing,
        strict=args.strict,
        recursive=args.recursive,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit 1 when unreadable inputs were skipped but others written, 2 when nothing was."""
    from msrfnet.inference.predict import SkippedInputs, open_segmenter, plan_predict, run_plan

    groups = dict(model=model_source(args), tiling=tiling(args), objects=objects(args))
    plan = plan_predict(args.inputs, **groups, outputs=outputs(args))
    try:
        run_plan(plan, open_segmenter(plan))
    except SkippedInputs as e:
        if not e.written:
            raise
        print(f"msrf predict: error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from msrfnet.inference.evaluate import evaluate

    evaluate(
        args.pred,
        args.gt,
        out=args.out,
        images=args.images,
        objects=objects(args),
        threshold=args.threshold,
        mask_suffix=args.mask_suffix,
        mask_threshold=args.mask_threshold,
        overwrite=args.overwrite,
    )
    return 0


def add_test(sub) -> None:
    """The ``test`` subcommand."""
    t = sub.add_parser("test", help="metrics on a dataset's test split, tables and overlays")
    t.add_argument("--data", help="dataset folder (default: ./data/kdsb, else the bundled sample)")
    add_model_flags(t, "evaluate", "the newest run in ./runs, else the shipped weights")
    t.add_argument("--out", help="output folder (default: <run>/test or ./msrf-test)")
    t.add_argument(
        "--batch-size",
        type=opt.positive_int,
        default=8,
        help="test images per batch (default 8)",
    )
    add_device_flags(t)
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier msrf test in --out",
    )
    add_instance_flags(
        t,
        "also report object metrics (2018 DSB mean AP over IoU 0.5:0.95, F1 at IoU 0.5, count "
        "error): each probability map at original resolution split into objects, against the "
        "label images of --instances-gt",
    )
    t.add_argument(
        "--instances-gt",
        metavar="DIR",
        help="--instances: instance label images paired with the test images by stem "
        "(0 = background, one value per object; e.g. kdsb-instances/test)",
    )
    t.add_argument(
        "--mask-suffix",
        type=opt.name_suffix,
        help="masks are named <image stem><suffix> (default: the checkpoint's, usually none)",
    )
    add_tiling_flags(t)
    t.set_defaults(func=cmd_test)


def add_predict(sub) -> None:
    """The ``predict`` subcommand."""
    t = sub.add_parser("predict", help="masks for image files or folders, at their original size")
    t.add_argument("inputs", nargs="+", help="image files or folders")
    add_model_flags(t, "predict")
    t.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    t.add_argument("--overlay", action="store_true", help="also write image | mask overlays")
    t.add_argument(
        "--probabilities", action="store_true", help="also write probability maps (16-bit PNG)"
    )
    t.add_argument("--tta", action="store_true", help="average over horizontal/vertical flips")
    t.add_argument(
        "--batch-size",
        type=opt.positive_int,
        default=8,
        help="images per model call (default 8; with --tile: tiles per call)",
    )
    add_device_flags(t)
    again = t.add_mutually_exclusive_group()
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier msrf predict in --out (only those)",
    )
    again.add_argument(
        "--skip-existing",
        action="store_true",
        help="resume: keep the images whose outputs an earlier msrf predict wrote",
    )
    t.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image (default: name it, skip it, exit 1)",
    )
    t.add_argument(
        "--recursive",
        action="store_true",
        help="read folders with their sub-folders (hidden ones skipped); the outputs mirror the "
        "tree (in/plate1/A01.png -> OUT/plate1/A01.png). Default: only the files directly inside",
    )
    add_instance_flags(t)
    add_tiling_flags(t)
    t.set_defaults(func=cmd_predict)


def add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand."""
    from msrfnet.inference.evaluate import DEFAULT_OUT as EVALUATE_OUT

    t = sub.add_parser(
        "evaluate",
        help="score any predictions against any ground truth (folders or files, paired by stem)",
        description="Pixel metrics of msrf test at each image's own size, per-image CSV, summary "
        "JSON; object metrics (2018 DSB mean AP over IoU 0.5:0.95, F1 at IoU 0.5, count error) "
        "when GT holds label images and the predictions have labels or --instances is given. "
        "An msrf predict output folder works as PRED (<stem>_labels.tif, <stem>_prob.png).",
    )
    t.add_argument("pred", help="predictions: a folder (or one file)")
    t.add_argument("gt", help="ground truth: a folder (or one file) of masks or label images")
    t.add_argument(
        "--out", default=str(EVALUATE_OUT), help=f"output folder (default: {EVALUATE_OUT})"
    )
    t.add_argument("--images", help="the images (paired by stem), for best/worst overlays")
    t.add_argument(
        "--threshold",
        type=opt.probability,
        default=0.5,
        help="for probability maps (<stem>_prob.png, float TIFFs): foreground = p ≥ T "
        "(default 0.5)",
    )
    t.add_argument(
        "--mask-suffix",
        type=opt.name_suffix,
        default="",
        help="GT stems end with this (ISIC: --mask-suffix _segmentation pairs a.png with "
        "a_segmentation.png)",
    )
    t.add_argument(
        "--mask-threshold",
        type=opt.finite_float,
        help="foreground = mask value > T (for label-map masks read as binary)",
    )
    t.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier msrf evaluate"
    )
    add_instance_flags(
        t,
        "split predictions without labels into objects (GT must be label images); "
        "--min-size, --seed-distance as msrf predict",
    )
    t.set_defaults(func=cmd_evaluate)
