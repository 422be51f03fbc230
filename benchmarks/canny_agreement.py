"""Agreement of ``msrfnet.model.canny`` with ``cv2.Canny`` on a whole dataset, and the test DSC of
the shipped weights with the Canny map computed in the graph vs by OpenCV.

    python benchmarks/canny_agreement.py --data ../shared/data/kdsb [--onnx one_input.onnx]

Prints, for the thresholds (10, 100) and (10, 1000) at 256²: the share of equal pixels over every
image of every split, exact (hysteresis until it converges) and with the bounded hysteresis of an
exported graph; then the mean per-image test DSC (threshold 0.5, 256² masks) of the two-input path
(OpenCV Canny) and of ``ImageToProbability`` (Canny in the graph), and of a one-input ONNX file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from msrfnet.data import canny_map, read_image, read_mask, resize_image, resize_mask
from msrfnet.data.io import foreground_to_grey
from msrfnet.data.preprocess import binarise_grey
from msrfnet.model.canny import canny
from msrfnet.model.loading import load_model
from msrfnet.model.pipeline import EXPORT_HYSTERESIS_ITERATIONS, ImageToProbability
from msrfnet.weights.resolve import SHIPPED_WEIGHTS

SIZE = 256


def _images(root: Path, split: str = "*") -> list[Path]:
    return sorted(root.glob(f"{split}/images/*.png"))


def agreement(root: Path) -> None:
    files = _images(root)
    rgb = np.stack([resize_image(read_image(f), SIZE) for f in files])
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    print(f"{len(files)} images at {SIZE}²")
    for low, high in ((10, 100), (10, 1000)):
        ref = np.stack([canny_map(i, low, high) for i in rgb])
        for its in (None, 64, 128, EXPORT_HYSTERESIS_ITERATIONS):
            t0 = time.perf_counter()
            got = torch.cat(
                [canny(x[i : i + 32], low, high, iterations=its) for i in range(0, len(x), 32)]
            )
            got = got[:, 0].numpy().astype(np.uint8)
            per_image = (got == ref).reshape(len(files), -1).mean(1)
            print(
                f"Canny({low}, {high}) hysteresis "
                f"{'until converged' if its is None else f'{its} steps'}: "
                f"{(got == ref).mean() * 100:.5f} % of pixels equal, "
                f"{np.count_nonzero(per_image < 1)} image(s) with a difference, worst image "
                f"{per_image.min() * 100:.4f} % ({time.perf_counter() - t0:.1f} s)"
            )


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter, total = np.logical_and(pred, truth).sum(), pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * inter / total


def test_dsc(root: Path, onnx: str | None) -> None:
    files = _images(root, "test")
    masks = [root / "test" / "masks" / f.name for f in files]
    net, cfg, _ = load_model(SHIPPED_WEIGHTS)
    net = net.eval().requires_grad_(False)
    cfg_low, cfg_high = cfg.canny_low, cfg.canny_high
    one = ImageToProbability(net, cfg_low, cfg_high).eval()
    session = None
    if onnx:
        import onnxruntime as ort

        session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    scores: dict[str, list[float]] = {"OpenCV Canny, two inputs": [], "Canny in the graph": []}
    if session is not None:
        scores["one-input ONNX (onnxruntime)"] = []
    for f, m in zip(files, masks):
        rgb = resize_image(read_image(f), SIZE)
        truth = binarise_grey(resize_mask(foreground_to_grey(read_mask(m)), SIZE)).astype(bool)
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()
        edges = torch.from_numpy(canny_map(rgb, cfg_low, cfg_high))[None, None].float()
        with torch.inference_mode():
            p2 = torch.sigmoid(net(image.float() / 255, edges).final)[0, 0].numpy()
            p1 = one(image)[0, 0].numpy()
        scores["OpenCV Canny, two inputs"].append(_dice(p2 >= 0.5, truth))
        scores["Canny in the graph"].append(_dice(p1 >= 0.5, truth))
        if session is not None:
            po = session.run(None, {"image": image.numpy()})[0][0, 0]
            scores["one-input ONNX (onnxruntime)"].append(_dice(po >= 0.5, truth))
    for name, values in scores.items():
        print(f"test DSC ({len(values)} images, 256² masks), {name}: {np.mean(values):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--onnx", help="also score this one-input ONNX export")
    p.add_argument("--skip-agreement", action="store_true")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    if not args.skip_agreement:
        agreement(Path(args.data))
    test_dsc(Path(args.data), args.onnx)


if __name__ == "__main__":
    main()
