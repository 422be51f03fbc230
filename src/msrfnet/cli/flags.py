"""Flags that several subcommands share, defined once: the model, device and numerics, objects,
tiling."""

from __future__ import annotations

import argparse

from msrfnet import options as opt

__all__ = ["add_model_flags", "add_device_flags", "add_instance_flags", "add_tiling_flags"]


def add_model_flags(
    p: argparse.ArgumentParser,
    verb: str | None = None,
    weights_default: str = "the shipped weights",
) -> None:
    """--weights (a run folder or weights file), and with a ``verb`` (test and predict) the
    exported models it can run instead, --onnx and --pt2 (one model per run: inference.runners),
    its input size and the threshold that turns its probabilities into masks."""
    p.add_argument(
        "--weights", help=f"run folder, .safetensors or .ckpt (default: {weights_default})"
    )
    if verb is None:
        return
    p.add_argument(
        "--onnx",
        help=f"{verb} with this exported ONNX model (float32 or --int8) through onnxruntime "
        "instead of PyTorch",
    )
    p.add_argument(
        "--pt2",
        help=f"{verb} with this int8 package of msrf export --int8 --out X.pt2 "
        "(torchao + AOTInductor, CPU)",
    )
    p.add_argument(
        "--image-size", type=opt.image_size, help="model input size (default: from the checkpoint)"
    )
    p.add_argument(
        "--threshold",
        type=opt.probability,
        default=0.5,
        help="foreground = probability ≥ T (default 0.5)",
    )


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """Where the PyTorch model runs and in which numerics: one rule for test, predict, serve."""
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps (PyTorch weights)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="float32 on the CPU (default there: bfloat16 fast path where the CPU has native bf16)",
    )


def add_instance_flags(p: argparse.ArgumentParser, what: str = "") -> None:
    """--instances, --min-size, --seed-distance (defaults: msrfnet.inference.instances)."""
    from msrfnet.option_groups import MIN_SIZE, SEED_DISTANCE

    p.add_argument(
        "--instances",
        action="store_true",
        help=what
        or "also split each mask into objects (distance transform + seeded watershed): "
        "<stem>_labels.tif (uint16 label image), <stem>_objects.csv (label, area, centroid, "
        "bounding box, mean intensity, eccentricity, solidity) and objects_summary.csv "
        "(stem, count)",
    )
    p.add_argument(
        "--min-size",
        type=opt.nonnegative_int,
        default=MIN_SIZE,
        help=f"--instances: drop objects under this many pixels (default {MIN_SIZE}, for nuclei "
        "at DSB resolution; about the area of the smallest object you care about)",
    )
    p.add_argument(
        "--seed-distance",
        type=opt.positive_int,
        default=SEED_DISTANCE,
        help=f"--instances: objects whose centres are closer than this many pixels stay one "
        f"(default {SEED_DISTANCE}, tuned on kdsb validation nuclei; about half the smallest "
        "object radius to keep apart)",
    )


def add_tiling_flags(p: argparse.ArgumentParser) -> None:
    """--tile, --overlap, --scale (msrfnet.inference.tiling)."""
    p.add_argument(
        "--tile",
        type=opt.image_size,
        metavar="SIZE",
        help="predict tiled at native scale: SIZE×SIZE windows (a multiple of 8), Gaussian-blended "
        "(default: the whole image resized to the model size, the paper's protocol; weights "
        "trained with --patch-size tile at their patch size by themselves); a single-image "
        "TIFF is then read and written band by band (TIFF mask)",
    )
    p.add_argument(
        "--overlap",
        type=opt.overlap,
        default=0.25,
        help="share of a tile's side that neighbouring tiles share (default 0.25)",
    )
    p.add_argument(
        "--scale",
        type=opt.scale,
        metavar="S",
        help="resample each image by S before tiling (0.5 halves its sides; the mask comes back "
        "at the image's size); tiles at the model size unless --tile (default: the scale the "
        "weights were trained at, else 1)",
    )
