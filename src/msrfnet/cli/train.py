"""``msrf train``: the training options (each a :class:`~msrfnet.config.Config` field) and the
demo defaults on the bundled sample."""

from __future__ import annotations

import argparse

from msrfnet import options as opt
from msrfnet.config import NORMALIZATIONS, PRECISE_BN, PRECISIONS, SCHEDULES, VARIANTS, Config
from msrfnet.errors import MSRFError

__all__ = ["DEMO", "add_train", "cmd_train"]

#: Demo defaults for ``msrf train`` on the bundled sample: 75 steps, small enough to finish on 2 CPU
#: cores in a few minutes and to reach a validation DSC above 0.75 (measured: README, main job).
DEMO = {"image_size": 64, "epochs": 15, "batch_size": 4}

_TRAIN_OPTIONS = [
    # flag, dest, type, help
    (
        "--data",
        "data",
        str,
        "dataset folder with train/ val/ test/ (default: ./data/kdsb, else the bundled sample)",
    ),
    ("--epochs", "epochs", opt.positive_int, "epochs (original: 125)"),
    (
        "--max-minutes",
        "max_minutes",
        opt.positive_float,
        "stop training after this many minutes (best epoch kept)",
    ),
    ("--batch-size", "batch_size", opt.positive_int, "images per batch and device (original: 4)"),
    ("--lr", "lr", opt.positive_float, "Adam learning rate (original: 1e-4)"),
    (
        "--image-size",
        "image_size",
        opt.image_size,
        "square model input size, a multiple of 8 (original: 256); "
        "training keeps ~0.38 GiB (bf16) or ~0.74 GiB (float32) per 256² image, "
        "scaling with pixels, "
        "and refuses a size this machine cannot hold",
    ),
    (
        "--patch-size",
        "patch_size",
        opt.image_size,
        "train at native scale: random P×P crops of each image (smaller images reflected up to "
        "P) instead of resizing whole images to --image-size; validation on each image's centre "
        "crop; predict/test then tile with P×P windows (a multiple of 8)",
    ),
    (
        "--scale",
        "scale",
        opt.scale,
        "with --patch-size: resample every image by this factor before cropping (0.5 halves "
        "its sides); predict/test resample by the same factor before tiling",
    ),
    (
        "--variant",
        "variant",
        opt.choice(VARIANTS),
        "official (the Keras graph, default) or clean (Fig. 2a wiring)",
    ),
    (
        "--schedule",
        "schedule",
        opt.choice(SCHEDULES),
        "learning-rate schedule: constant (original) or cosine",
    ),
    (
        "--precision",
        "precision",
        opt.choice(PRECISIONS),
        "auto (bf16-mixed on a GPU, 32 on a CPU), " + ", ".join(PRECISIONS[1:]),
    ),
    ("--devices", "devices", opt.devices, "devices per node: auto, a count, or a list like 0,1"),
    ("--strategy", "strategy", opt.text, "Lightning strategy: auto, ddp, ..."),
    ("--num-nodes", "num_nodes", opt.positive_int, "machines (with torchrun or SLURM)"),
    ("--workers", "workers", opt.nonnegative_int, "data-loader worker processes"),
    ("--seed", "seed", opt.seed, "random seed (default 42)"),
    ("--out", "out", str, "folder for run directories (default: runs)"),
    ("--name", "name", opt.run_name, "run directory name (default: msrf-<date>-<time>)"),
    (
        "--canny-low",
        "canny_low",
        opt.nonnegative_int,
        "low Canny threshold of the image-gradient input (original: 10)",
    ),
    (
        "--canny-high",
        "canny_high",
        opt.nonnegative_int,
        "high Canny threshold of the image-gradient input (original: 1000)",
    ),
    (
        "--mask-threshold",
        "mask_threshold",
        opt.finite_float,
        "foreground = mask value > T (needed for label-map masks)",
    ),
    (
        "--mask-suffix",
        "mask_suffix",
        opt.name_suffix,
        "masks are named <image stem><suffix> (ISIC: _segmentation); default: the same stem",
    ),
    (
        "--normalize",
        "normalize",
        opt.choice(NORMALIZATIONS),
        "16-bit and float images to 0-255: minmax (each image's own range, default) or "
        "percentile (its 1-99.8 %% range, clipped); recorded in the checkpoint and applied the "
        "same way by test, predict and Segmenter",
    ),
    ("--cache-dir", "cache_dir", str, "where preprocessed arrays are cached"),
]


def _add_flags(p: argparse.ArgumentParser) -> None:
    for flag, dest, typ, help_ in _TRAIN_OPTIONS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument(
        "--augment",
        action="store_true",
        default=None,
        help="flips, rot90, mild affine, brightness/contrast (off in the original)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="deterministic algorithms (with --seed: repeatable runs)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (falls back to eager if unavailable)",
    )
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        default=None,
        help="keep NCHW memory layout",
    )
    p.add_argument(
        "--no-subpixel",
        dest="subpixel",
        action="store_false",
        default=None,
        help="run the DSDF up-exchanges as transposed convolutions "
        "(same function, slower on a CPU)",
    )
    p.add_argument(
        "--precise-bn",
        dest="precise_bn",
        type=opt.choice(PRECISE_BN),
        default=None,
        help="recompute BatchNorm statistics from training batches before validation: auto "
        "(default: while the running statistics cannot have converged), on, off (original)",
    )


def _explicit(args: argparse.Namespace) -> dict:
    fields = set(Config().to_dict())
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from msrfnet.data import resolve_data_root
    from msrfnet.train.fit import resume_config, train

    given = _explicit(args)
    _native_scale(given)
    if args.resume:
        config = resume_config(args.resume)
        for k, v in given.items():
            setattr(config, k, v)
        train(config, resume=args.resume)
        return 0
    config = Config(**given)
    root, _ = resolve_data_root(config.data)
    from msrfnet.data import sample_root

    if root.resolve() == sample_root().resolve():
        demo = {k: v for k, v in DEMO.items() if k not in given}
        if config.patch_size:  # the model input is the patch
            demo.pop("image_size", None)
        for k, v in demo.items():
            setattr(config, k, v)
        if demo:
            print(
                "demo defaults on the bundled sample: "
                + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in demo.items())
            )
    train(config)
    return 0


def _native_scale(given: dict) -> None:
    """``--patch-size P`` makes P the model's input size (``image_size``); ``--scale`` needs it."""
    patch = given.get("patch_size")
    if "scale" in given and not patch:
        raise MSRFError(
            "--scale resamples the images of a native-scale run: give --patch-size too "
            "(the resize protocol resizes every image to --image-size anyway)"
        )
    if patch:
        if given.get("image_size", patch) != patch:
            raise MSRFError(
                f"--image-size {given['image_size']} and --patch-size {patch}: at native scale "
                "the model input is the patch; give --patch-size alone"
            )
        given["image_size"] = patch


def add_train(sub) -> None:
    """The ``train`` subcommand."""
    t = sub.add_parser("train", help="train on a dataset (the bundled sample when none is given)")
    _add_flags(t)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.set_defaults(func=cmd_train)
