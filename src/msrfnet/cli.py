"""The ``msrf`` command: argument parsing only; each subcommand calls one typed function.

Heavy imports (torch, Lightning) happen inside the subcommands so ``msrf --help`` is instant.
User errors (:class:`~msrfnet.errors.MSRFError`) print as lines with no traceback and exit 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .config import Config
from .errors import MSRFError

#: Demo defaults for ``msrf train`` on the bundled sample: small enough to finish on 2 CPU cores in
#: a few minutes (measured in tests/test_cli.py::test_demo_defaults_are_small).
DEMO = {"image_size": 64, "epochs": 15, "batch_size": 4}

_TRAIN_OPTIONS = [
    # flag, dest, type, help
    ("--data", "data", str, "dataset folder with train/ val/ test/ (default: ./data/kdsb, else the bundled sample)"),
    ("--epochs", "epochs", int, "epochs (original: 125)"),
    ("--max-minutes", "max_minutes", float, "stop training after this many minutes (best epoch kept)"),
    ("--batch-size", "batch_size", int, "images per batch and device (original: 4)"),
    ("--lr", "lr", float, "Adam learning rate (original: 1e-4)"),
    ("--image-size", "image_size", int, "square model input size, a multiple of 8 (original: 256)"),
    ("--variant", "variant", str, "official (the Keras graph, default) or clean (Fig. 2a wiring)"),
    ("--schedule", "schedule", str, "learning-rate schedule: constant (original) or cosine"),
    ("--precision", "precision", str, "auto (bf16-mixed on a GPU, 32 on a CPU), 32-true, bf16-mixed, 16-mixed"),
    ("--devices", "devices", str, "devices per node: auto, a count, or a list like 0,1"),
    ("--strategy", "strategy", str, "Lightning strategy: auto, ddp, ..."),
    ("--num-nodes", "num_nodes", int, "machines (with torchrun or SLURM)"),
    ("--workers", "workers", int, "data-loader worker processes"),
    ("--seed", "seed", int, "random seed (default 42)"),
    ("--out", "out", str, "folder for run directories (default: runs)"),
    ("--name", "name", str, "run directory name (default: msrf-<date>-<time>)"),
    ("--canny-low", "canny_low", int, "low Canny threshold of the image-gradient input (original: 10)"),
    ("--canny-high", "canny_high", int, "high Canny threshold of the image-gradient input (original: 1000)"),
    ("--mask-threshold", "mask_threshold", float, "foreground = mask value > T (needed for label-map masks)"),
    ("--cache-dir", "cache_dir", str, "where preprocessed arrays are cached"),
]


def _add_flags(p: argparse.ArgumentParser) -> None:
    for flag, dest, typ, help_ in _TRAIN_OPTIONS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument("--augment", action="store_true", default=None, help="flips, rot90, mild affine, brightness/contrast (off in the original)")
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms (with --seed: repeatable runs)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (falls back to eager if unavailable)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None, help="keep NCHW memory layout")
    p.add_argument("--no-subpixel", dest="subpixel", action="store_false", default=None,
                   help="run the DSDF up-exchanges as transposed convolutions (same function, slower on a CPU)")


def _explicit(args: argparse.Namespace) -> dict:
    fields = set(Config().to_dict())
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from .data import resolve_data_root
    from .fit import resume_config, train

    given = _explicit(args)
    if args.resume:
        config = resume_config(args.resume)
        for k, v in given.items():
            setattr(config, k, v)
        train(config, resume=args.resume)
        return 0
    config = Config(**given)
    root, _ = resolve_data_root(config.data)
    from .data import sample_root

    if root.resolve() == sample_root().resolve():
        demo = {k: v for k, v in DEMO.items() if k not in given}
        for k, v in demo.items():
            setattr(config, k, v)
        if demo:
            print("demo defaults on the bundled sample: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in demo.items()))
    train(config)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .evaluate import run_test

    run_test(data=args.data, weights=args.weights, image_size=args.image_size, out=args.out,
             batch_size=args.batch_size, threshold=args.threshold, exact=args.exact, onnx=args.onnx, pt2=args.pt2)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import run_predict

    run_predict(args.inputs, weights=args.weights, onnx=args.onnx, out=args.out, overlay=args.overlay,
                probabilities=args.probabilities, tta=args.tta, threshold=args.threshold,
                batch_size=args.batch_size, image_size=args.image_size, exact=args.exact, pt2=args.pt2)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data import check_data

    report = check_data(args.dir, mask_threshold=args.mask_threshold)
    print(report.format())
    return 0 if report.ok else 1


def cmd_split(args: argparse.Namespace) -> int:
    from .data import split_dataset

    result = split_dataset(args.src, args.out, val=args.val, test=args.test, seed=args.seed, splits_json=args.splits_json)
    print(result if isinstance(result, str) else f"split written to {args.out} (splits.json lists the files)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.out.endswith(".pt2"):
        if not args.int8:
            raise MSRFError(f"{args.out}: a .pt2 package is the int8 CPU model; add --int8 (or write an .onnx file)")
        from .int8_cpu import export_int8_pt2

        export_int8_pt2(args.weights, args.out, calibration=args.calibration, n=args.calibration_count,
                        image_size=args.image_size)
        return 0
    if args.int8:
        from .quantize import export_int8

        export_int8(args.weights, args.out, calibration=args.calibration, n=args.calibration_count,
                    opset=args.opset, image_size=args.image_size or 256)
        return 0
    from .export import export_onnx

    export_onnx(args.weights, args.out, opset=args.opset, image_size=args.image_size or 256)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    extra = None
    if args.data is not None:
        from .bench_data import data_throughput

        extra = data_throughput(args.data, image_size=args.image_size, batch_size=args.batch_size or 32,
                                workers=args.workers, augment=args.augment)
    run_bench(device=args.device, as_json=args.json, batch_size=args.batch_size, image_size=args.image_size,
              steps=args.steps, compile=not args.no_compile, extra=extra)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msrf", description="MSRF-Net: train, test and apply it to 2D biomedical images.")
    p.add_argument("--version", action="version", version=f"msrfnet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train on a dataset (the bundled sample when none is given)")
    _add_flags(t)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.set_defaults(func=cmd_train)

    t = sub.add_parser("test", help="metrics on a dataset's test split, tables and overlays")
    t.add_argument("--data", help="dataset folder (default: ./data/kdsb, else the bundled sample)")
    t.add_argument("--weights", help="run folder, .safetensors or .ckpt (default: the newest run in ./runs, else the shipped weights)")
    t.add_argument("--image-size", type=int, help="model input size (default: from the checkpoint)")
    t.add_argument("--onnx", help="evaluate this exported ONNX model (float32 or --int8) through onnxruntime")
    t.add_argument("--pt2", help="evaluate this int8 package of msrf export --int8 --out X.pt2 (torchao + AOTInductor, CPU)")
    t.add_argument("--out", help="output folder (default: <run>/test or ./msrf-test)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--threshold", type=float, default=0.5)
    t.add_argument("--exact", action="store_true",
                   help="float32 on the CPU (default there: bfloat16 fast path where the CPU has native bf16)")
    t.set_defaults(func=cmd_test)

    t = sub.add_parser("predict", help="masks for image files or folders, at their original size")
    t.add_argument("inputs", nargs="+", help="image files or folders")
    t.add_argument("--weights", help="run folder, .safetensors or .ckpt (default: the shipped weights)")
    t.add_argument("--onnx", help="predict with this ONNX model through onnxruntime instead of PyTorch")
    t.add_argument("--pt2", help="predict with this int8 package of msrf export --int8 --out X.pt2 (torchao + AOTInductor, CPU)")
    t.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    t.add_argument("--overlay", action="store_true", help="also write image | mask overlays")
    t.add_argument("--probabilities", action="store_true", help="also write probability maps (16-bit PNG)")
    t.add_argument("--tta", action="store_true", help="average over horizontal/vertical flips")
    t.add_argument("--threshold", type=float, default=0.5)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--image-size", type=int, help="model input size (default: from the checkpoint)")
    t.add_argument("--exact", action="store_true",
                   help="float32 on the CPU (default there: bfloat16 fast path where the CPU has native bf16)")
    t.set_defaults(func=cmd_predict)

    t = sub.add_parser("check-data", help="validate a dataset folder before training")
    t.add_argument("dir")
    t.add_argument("--mask-threshold", type=float, help="foreground = mask value > T (for label-map masks)")
    t.set_defaults(func=cmd_check_data)

    t = sub.add_parser("split", help="split a flat images/ + masks/ folder into train/val/test")
    t.add_argument("src")
    t.add_argument("--out", required=True)
    t.add_argument("--val", type=float, default=0.1)
    t.add_argument("--test", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--splits-json", help="re-create a published split from its splits.json")
    t.set_defaults(func=cmd_split)

    t = sub.add_parser("export", help="export to ONNX (dynamic batch, height and width)")
    t.add_argument("--weights", help="run folder, .safetensors or .ckpt (default: the shipped weights)")
    t.add_argument("--out", default="msrfnet.onnx")
    t.add_argument("--opset", type=int, default=17)
    t.add_argument("--image-size", type=int, help="ONNX: example input size used for tracing (default 256); "
                   ".pt2: the one input size the package takes (default: the checkpoint's)")
    t.add_argument("--int8", action="store_true",
                   help="int8 model for CPU inference: onnxruntime static quantization, or with --out X.pt2 a "
                        "torchao + AOTInductor package for this CPU (faster; see docs/PERFORMANCE.md)")
    t.add_argument("--calibration", help="--int8 calibration images: a dataset root (its train/images) or a folder "
                   "of images (default: the bundled kdsb sample's training images)")
    t.add_argument("--calibration-count", type=int, default=16, help="--int8: number of calibration images")
    t.set_defaults(func=cmd_export)

    t = sub.add_parser("bench", help="training/inference throughput, memory and MFU: baseline vs optimized")
    t.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--image-size", type=int, default=256)
    t.add_argument("--steps", type=int)
    t.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the optimized path")
    t.add_argument("--data", help="also measure the training data loader on this dataset (images/s)")
    t.add_argument("--workers", type=int, default=2, help="--data: loader worker processes (default 2)")
    t.add_argument("--augment", action="store_true", help="--data: with the training augmentation")
    t.set_defaults(func=cmd_bench)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it between calls)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _setup_logging() -> None:
    pkg = logging.getLogger("msrfnet")
    pkg.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in pkg.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        pkg.addHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    _setup_logging()
    try:
        return int(args.func(args) or 0)
    except MSRFError as e:
        if args.debug:
            raise
        for line in str(e).splitlines():
            print(f"msrf {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"msrf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
