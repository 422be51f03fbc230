"""Which kind of kdsb image do the shipped weights handle worst? (issue 21, item 3)

Every kdsb image (train, val and test: 670) through the shipped weights at the paper's protocol
(256² Lanczos resize, Canny 10/1000, per-image DSC at 256² against the binarised resized mask),
with each image's appearance: ``fluorescence`` (grey, dark background), ``brightfield`` (grey,
light background) or ``colour`` (stained tissue, H&E-like). Writes one CSV row per image and
prints the mean DSC per kind and split.

    python benchmarks/kdsb_kinds.py ../shared/data/kdsb --out docs/logs/<date>/kdsb_kinds.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from msrfnet.accel.cpu import optimize_for_cpu_inference
from msrfnet.data.files import list_image_files
from msrfnet.data.io import foreground_to_grey, read_image, read_mask
from msrfnet.data.preprocess import binarise_grey, model_inputs, resize_mask
from msrfnet.model.loading import load_model
from msrfnet.model.msrfnet import scale_pixels
from msrfnet.weights.resolve import SHIPPED_WEIGHTS


def kind_of(rgb: np.ndarray) -> str:
    """Appearance of an RGB uint8 image: colour when its channels differ, else by background."""
    spread = float(np.abs(rgb.astype(np.int16) - rgb.mean(axis=2, keepdims=True)).mean())
    if spread > 2.0:
        return "colour"
    return "brightfield" if float(np.median(rgb)) > 100 else "fluorescence"


def dsc(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = float((pred & truth).sum())
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2 * inter / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    args = ap.parse_args()
    model, cfg, _ = load_model(args.weights)
    model = optimize_for_cpu_inference(model)  # bfloat16 where the CPU has it (msrf test's path)
    rows = []
    start = time.perf_counter()
    for split in ("train", "val", "test"):
        for f in list_image_files(args.data / split / "images"):
            rgb = read_image(f)
            grey = foreground_to_grey(read_mask(args.data / split / "masks" / f.name))
            truth = binarise_grey(resize_mask(grey, cfg.image_size)).astype(bool)
            images, canny = model_inputs([rgb], cfg.image_size, cfg.canny_low, cfg.canny_high)
            with torch.inference_mode():
                x = scale_pixels(torch.from_numpy(images))
                logits = model(x, torch.from_numpy(canny).float())
            prob = torch.sigmoid(logits[0])[0, 0].float().numpy()
            rows.append(
                {
                    "split": split,
                    "stem": f.stem,
                    "kind": kind_of(rgb),
                    "height": rgb.shape[0],
                    "width": rgb.shape[1],
                    "foreground": round(float(truth.mean()), 4),
                    "dsc": round(dsc(prob >= cfg.threshold, truth), 4),
                }
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} images in {time.perf_counter() - start:.0f} s")
    for kind in sorted({r["kind"] for r in rows}):
        for split in ("train", "val", "test"):
            d = [r["dsc"] for r in rows if r["kind"] == kind and r["split"] == split]
            if d:
                print(f"{kind:13s} {split:5s} n={len(d):3d} mean DSC {np.mean(d):.4f}")


if __name__ == "__main__":
    main()
