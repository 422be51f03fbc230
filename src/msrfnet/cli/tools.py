"""``msrf check-data``, ``split``, ``export``, ``bench`` and ``serve``: data, deployment and
measurement commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from msrfnet import options as opt
from msrfnet.cli.flags import add_device_flags, add_model_flags
from msrfnet.errors import MSRFError

__all__ = [
    "add_check_data",
    "add_split",
    "add_export",
    "add_bench",
    "add_serve",
    "cmd_check_data",
    "cmd_split",
    "cmd_export",
    "cmd_bench",
    "cmd_serve",
]


def cmd_check_data(args: argparse.Namespace) -> int:
    from msrfnet.data import check_data

    report = check_data(args.dir, mask_threshold=args.mask_threshold, mask_suffix=args.mask_suffix)
    print(report.format())
    return 0 if report.ok else 1


def cmd_split(args: argparse.Namespace) -> int:
    from msrfnet.data import split_dataset

    result = split_dataset(
        args.src,
        args.out,
        val=args.val,
        test=args.test,
        seed=args.seed,
        splits_json=args.splits_json,
    )
    print(
        result
        if isinstance(result, str)
        else f"split written to {args.out} (splits.json lists the files)"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``msrf export``: the format from the flags and the name (each export checks its
    destination, suffix included, before it exports anything)."""
    from msrfnet.export.destination import export_format

    fmt = export_format(args.out, int8=args.int8, bioimageio=args.bioimageio is not None)
    if fmt == "bioimageio":
        return _export_bioimageio(args)
    if fmt == "int8-pt2":
        from msrfnet.export.pt2_int8 import export_int8_pt2

        export_int8_pt2(
            args.weights,
            args.out,
            calibration=args.calibration,
            n=args.calibration_count,
            image_size=args.image_size,
            overwrite=args.overwrite,
        )
    elif fmt == "int8-onnx":
        from msrfnet.export.onnx_int8 import export_int8

        export_int8(
            args.weights,
            args.out,
            calibration=args.calibration,
            n=args.calibration_count,
            opset=args.opset,
            image_size=args.image_size,
            overwrite=args.overwrite,
        )
    else:
        from msrfnet.export.onnx import export_onnx

        export_onnx(
            args.weights,
            args.out,
            opset=args.opset,
            image_size=args.image_size,
            overwrite=args.overwrite,
            single_input=not args.two_inputs,
        )
    return 0


def _export_bioimageio(args: argparse.Namespace) -> int:
    """The package's destination checked, then the one-input ONNX in a temporary folder, then the
    bioimage.io package around it."""
    import tempfile

    from msrfnet.export.bioimageio import package_bioimageio
    from msrfnet.export.destination import check_destination
    from msrfnet.export.onnx import export_onnx
    from msrfnet.model.loading import load_model
    from msrfnet.weights.resolve import resolve_weights

    if args.two_inputs or args.int8:
        raise MSRFError("--bioimageio packages the one-input float model; drop --two-inputs/--int8")
    path = resolve_weights(args.weights, prefer_runs=False)  # export_onnx says which, once
    check_destination(
        args.bioimageio,
        "bioimageio",
        inputs=[path.parent],
        overwrite=args.overwrite,
        option="--bioimageio",
    )
    _, cfg, _ = load_model(path)
    with tempfile.TemporaryDirectory(prefix="msrf-bioimageio-") as tmp:
        onnx = export_onnx(
            args.weights,
            Path(tmp) / "msrfnet.onnx",
            opset=args.opset,
            image_size=args.image_size,
            single_input=True,
            result_name="the one-input ONNX model",  # a temporary file: not named as a result
        )
        out = package_bioimageio(
            onnx,
            args.bioimageio,
            weights_path=path,
            config=cfg,
            overwrite=args.overwrite,
        )
    print(f"wrote {out}; check it with: bioimageio test {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from msrfnet.bench.plan import BenchOptions
    from msrfnet.bench.run import run_bench

    extra = None
    if args.data is not None:
        from msrfnet.bench.data import data_throughput

        # with --json stdout carries the JSON alone: messages (a cache build) go to stderr
        quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
        with quiet:
            extra = data_throughput(
                args.data,
                image_size=args.image_size,
                batch_size=args.batch_size or 32,
                workers=args.workers,
                augment=args.augment,
            )
    options = BenchOptions(
        device=args.device,
        batch_size=args.batch_size,
        image_size=args.image_size,
        steps=args.steps,
        compile=not args.no_compile,
    )
    run_bench(options, as_json=args.json, extra=extra)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from msrfnet.serve import missing_extra

    hint = missing_extra()
    if hint:
        raise MSRFError(hint)
    from msrfnet.serve.app import start

    start(
        args.weights,
        host=args.host,
        port=args.port,
        device=args.device,
        exact=args.exact,
        max_mb=args.max_mb,
        max_megapixels=args.max_megapixels,
    )
    return 0


def add_check_data(sub) -> None:
    """The ``check-data`` subcommand."""
    t = sub.add_parser("check-data", help="validate a dataset folder before training")
    t.add_argument(
        "dir",
        help="dataset root: train/, val/ (or valid/) and test/, each with images/ and masks/ "
        "(paired by file stem)",
    )
    t.add_argument(
        "--mask-threshold",
        type=opt.finite_float,
        help="foreground = mask value > T (for label-map masks)",
    )
    t.add_argument(
        "--mask-suffix",
        type=opt.name_suffix,
        default="",
        help="masks are named <image stem><suffix> (ISIC: _segmentation)",
    )
    t.set_defaults(func=cmd_check_data)


def add_split(sub) -> None:
    """The ``split`` subcommand."""
    t = sub.add_parser("split", help="split a flat images/ + masks/ folder into train/val/test")
    t.add_argument("src", help="a folder holding images/ and masks/ (paired by file stem)")
    t.add_argument(
        "--out",
        required=True,
        help="destination folder, new or empty: gets train/, val/ and test/ (each images/ + "
        "masks/, files copied) and splits.json",
    )
    t.add_argument(
        "--val",
        type=float,
        default=0.1,
        help="share of the pairs for val: round(N×VAL) (default 0.1; VAL + TEST below 1)",
    )
    t.add_argument(
        "--test",
        type=float,
        default=0.1,
        help="share of the pairs for test: round(N×TEST) (default 0.1); train gets the rest",
    )
    t.add_argument(
        "--seed",
        type=opt.seed,
        default=42,
        help="seed of the random order (default 42): the same source, shares and seed give the "
        "same split",
    )
    t.add_argument(
        "--splits-json",
        help="re-create a published split from its splits.json (its shares and seed "
        "replace --val, --test and --seed)",
    )
    t.set_defaults(func=cmd_split)


def add_export(sub) -> None:
    """The ``export`` subcommand."""
    t = sub.add_parser("export", help="export to ONNX, an int8 .pt2 or a bioimage.io package")
    add_model_flags(t)
    t.add_argument(
        "--out",
        default="msrfnet.onnx",
        help="the model file (default: msrfnet.onnx; dynamic batch, height and width); "
        "X.pt2 with --int8 writes the torchao + AOTInductor package instead (not used with "
        "--bioimageio)",
    )
    t.add_argument(
        "--opset",
        type=opt.positive_int,
        default=17,
        help="ONNX opset version (default 17; not used for .pt2)",
    )
    t.add_argument(
        "--image-size",
        type=opt.image_size,
        help="the model input size recorded in the export (default: the checkpoint's, the size "
        "the weights were trained at); ONNX takes other multiples of 8 too, .pt2 only this one",
    )
    t.add_argument(
        "--int8",
        action="store_true",
        help="int8 model for CPU inference: onnxruntime static quantization, or with --out X.pt2 a "
        "torchao + AOTInductor package for this CPU (faster; see docs/PERFORMANCE.md)",
    )
    t.add_argument(
        "--calibration",
        help="--int8 calibration images: a dataset root (its train/images) or a folder "
        "of images (default: the bundled kdsb sample's training images)",
    )
    t.add_argument(
        "--calibration-count",
        type=opt.positive_int,
        default=16,
        help="--int8: number of calibration images",
    )
    t.add_argument(
        "--overwrite", action="store_true", help="replace the file of an earlier msrf export"
    )
    t.add_argument(
        "--two-inputs",
        action="store_true",
        help="the two-input graph (image in [0, 1] + Canny map, logits of all four heads) "
        "instead of the one-input model (uint8 image in, probability out)",
    )
    t.add_argument(
        "--bioimageio",
        metavar="OUT",
        help="write a BioImage Model Zoo package (folder, or .zip) for ilastik, deepImageJ, "
        "QuPath; needs pip install -e '.[onnx,bioimageio]'",
    )
    t.set_defaults(func=cmd_export)


def add_bench(sub) -> None:
    """The ``bench`` subcommand."""
    t = sub.add_parser(
        "bench", help="training/inference throughput, memory and MFU: baseline vs optimized"
    )
    t.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument(
        "--batch-size",
        type=opt.positive_int,
        help="training batch size (default: 32 on CUDA, 2 on the CPU; --data loader: 32)",
    )
    t.add_argument(
        "--image-size",
        type=opt.image_size,
        default=256,
        help="square input size, a multiple of 8 (default 256)",
    )
    t.add_argument(
        "--steps",
        type=opt.positive_int,
        help="timed training steps (default: 20 on CUDA, 2 on the CPU, where inference times "
        "at least 3)",
    )
    t.add_argument(
        "--no-compile", action="store_true", help="leave torch.compile out of the optimized path"
    )
    t.add_argument(
        "--data", help="also measure the training data loader on this dataset (images/s)"
    )
    t.add_argument(
        "--workers",
        type=opt.nonnegative_int,
        default=2,
        help="--data: loader worker processes (default 2)",
    )
    t.add_argument("--augment", action="store_true", help="--data: with the training augmentation")
    t.set_defaults(func=cmd_bench)


def add_serve(sub) -> None:
    """The ``serve`` subcommand."""
    t = sub.add_parser("serve", help="a local web service and page: see masks and objects")
    add_model_flags(t)
    t.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only)",
    )
    t.add_argument("--port", type=int, default=8000, help="default 8000")
    add_device_flags(t)
    t.add_argument(
        "--max-mb",
        type=float,
        default=32,
        help="largest upload in MiB (default 32; over: HTTP 413)",
    )
    t.add_argument(
        "--max-megapixels",
        type=float,
        default=25,
        help="largest image in megapixels (default 25; over: HTTP 413)",
    )
    t.set_defaults(func=cmd_serve)
