"""Time and peak memory of tiled prediction (``msrf predict --tile``) against the image's side.

For each side N (default 256 512 1024 2048 4096): a mosaic of the bundled kdsb sample images
(30 different 256² fields, cycled with flips), N × N, written as an uncompressed RGB TIFF (read
through a memory map and written band by band) and/or a PNG (read whole; the mask is a PNG).
Each run is the real command, ``python -m msrfnet.cli predict IMAGE --tile T --out DIR``, in a
child process of its own: the wall time of the whole command (interpreter start and weights
included), and its peak resident memory (``ru_maxrss`` of that child from ``os.wait4``: what
``/proc/<pid>/status`` calls VmHWM). The 256² row is the fixed cost (Python, torch, the model).
Then the mask is checked: N × N, values 0/255.

    python benchmarks/tiled_predict.py                               # TIFF, 256…4096, tile 256
    python benchmarks/tiled_predict.py --formats tif png --sides 512 1024 2048
    python benchmarks/tiled_predict.py --sides 256 4096 8192                # the largest ones
    python benchmarks/tiled_predict.py --sides 2048 --fields dark --picture docs/img/tiled.png

``--picture`` also writes a figure of the largest side's prediction (run with ``--overlay
--probabilities``): the overlay downscaled, a full-resolution crop across window borders (the
seams should not show; the crossing of window borders with the most nuclei around it), and
that crop split into objects. ``--fields dark`` builds the mosaic from the fluorescence fields
only, so that it has no seams between differently stained fields.

Prints one JSON object per run and a table at the end; nothing is contacted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def mosaic(side: int, fields_kind: str = "all") -> np.ndarray:
    """An N × N RGB image tiled with the sample's 256² images (flipped by position);
    ``fields_kind="dark"`` uses only the fluorescence fields (dark background), so that the
    mosaic has no seams between differently stained fields (for the picture)."""
    from msrfnet.data import read_image, sample_root

    files = sorted(sample_root().glob("*/images/*.png"))
    fields = [read_image(f) for f in files]
    if fields_kind == "dark":
        fields = [f for f in fields if float(f.mean()) < 60]
    cells = math.ceil(side / 256)
    out = np.zeros((cells * 256, cells * 256, 3), np.uint8)
    for i in range(cells):
        for j in range(cells):
            k = (i * cells + j) % len(fields)
            field = fields[k]
            if (i + j) % 2:
                field = field[:, ::-1]
            if (i // 2 + j) % 3 == 1:
                field = field[::-1]
            out[i * 256 : (i + 1) * 256, j * 256 : (j + 1) * 256] = field[:256, :256]
    return np.ascontiguousarray(out[:side, :side])


def write_input(image: np.ndarray, path: Path) -> None:
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, image, photometric="rgb")  # uncompressed: memory-mappable
    else:
        from PIL import Image

        Image.fromarray(image).save(path, compress_level=1)


def run_one(image: Path, out: Path, tile: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "msrfnet.cli", "predict", str(image), "--tile", str(tile)]
    cmd += ["--out", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "output": stdout.strip().splitlines()[-1],
    }


def check_mask(path: Path, side: int) -> None:
    if path.suffix == ".tif":
        import tifffile

        mask = tifffile.imread(path)
    else:
        from PIL import Image

        mask = np.asarray(Image.open(path))
    assert mask.shape == (side, side), mask.shape
    assert set(np.unique(mask)) <= {0, 255}


def picture(out: Path, stem: str, image: np.ndarray, tile: int, dest: Path) -> Path:
    """Three panels: the whole prediction (the overlay ``msrf predict`` wrote, downscaled), a
    full-resolution crop across window borders (dotted) with the mask outlined, and the same crop
    with the mask split into objects (``--instances``' watershed on the probabilities)."""
    import cv2
    import tifffile
    from PIL import Image

    from msrfnet.inference.instances import split_instances
    from msrfnet.inference.tiling import tile_starts
    from msrfnet.overlay import display_rgb, draw_overlay

    side, panel, view = image.shape[0], 520, 260
    whole = np.asarray(Image.open(out / f"{stem}_overlay.png").convert("RGB"))
    small = cv2.resize(whole, (panel, panel), interpolation=cv2.INTER_AREA)
    prob = tifffile.imread(out / f"{stem}_prob.tif").astype(np.float32) / 65535
    starts = tile_starts(side, tile, 0.25)
    borders = sorted({e for s in starts for e in (s, s + tile) if 0 < e < side})

    def objects_around(y: int, x: int) -> int:  # nuclei in the view centred on a crossing
        y0, x0 = min(max(0, y - view // 2), side - view), min(max(0, x - view // 2), side - view)
        crop = (prob[y0 : y0 + view, x0 : x0 + view] >= 0.5).astype(np.uint8)
        return cv2.connectedComponents(crop)[0] - 1

    # the crossing of window borders with the most nuclei around it: seams would show there
    cy, cx = max(((y, x) for y in borders for x in borders), key=lambda yx: objects_around(*yx))
    y0 = min(max(0, cy - view // 2), side - view)
    x0 = min(max(0, cx - view // 2), side - view)
    crop_rgb = display_rgb(image[y0 : y0 + view, x0 : x0 + view])
    crop_prob = prob[y0 : y0 + view, x0 : x0 + view]
    mask_panel = draw_overlay(crop_rgb, crop_prob >= 0.5)
    labels = split_instances(
        prob[max(0, y0 - 32) : y0 + view + 32, max(0, x0 - 32) : x0 + view + 32]
    )
    labels = labels[y0 - max(0, y0 - 32) :][:view, x0 - max(0, x0 - 32) :][:, :view]
    rng = np.random.default_rng(1)
    colours = rng.integers(60, 256, (int(labels.max()) + 1, 3)).astype(np.uint8)
    colours[0] = 0
    tint = colours[labels]
    label_panel = np.where(labels[..., None] > 0, (0.45 * crop_rgb + 0.55 * tint), crop_rgb)
    label_panel = label_panel.astype(np.uint8)
    panels = []
    for crop in (mask_panel, label_panel):
        big = cv2.resize(crop, (panel, panel), interpolation=cv2.INTER_NEAREST)
        k = panel / view
        for s in starts:  # window borders, dotted yellow
            for edge in (s, s + tile):
                for origin, axis in ((y0, 0), (x0, 1)):
                    e = int(round((edge - origin) * k))
                    if 0 <= e < panel:
                        if axis == 0:
                            big[e, ::6] = (255, 230, 0)
                        else:
                            big[::6, e] = (255, 230, 0)
        panels.append(big)
    gap = np.full((panel, 10, 3), 255, np.uint8)
    figure = np.concatenate([display_rgb(small), gap, panels[0], gap, panels[1]], axis=1)
    Image.fromarray(figure).quantize(colors=192, dither=Image.Dither.NONE).save(dest, optimize=True)
    return dest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--formats", nargs="+", default=["tif"], choices=["tif", "png"])
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more msrf predict flags")
    p.add_argument("--picture", type=Path, help="write the overlay figure of the largest side")
    p.add_argument(
        "--fields",
        choices=["all", "dark"],
        default="all",
        help="mosaic of all sample fields, or of the fluorescence (dark) ones only",
    )
    p.add_argument("--keep", type=Path, help="keep the inputs and outputs in this folder")
    args = p.parse_args()

    import torch

    from msrfnet.inference.tiling import tile_starts

    print(
        json.dumps(
            {
                "date": dt.datetime.now().isoformat(timespec="seconds"),
                "machine": platform.processor() or platform.machine(),
                "cpus": len(os.sched_getaffinity(0)),
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "load_average": os.getloadavg(),
            }
        ),
        flush=True,
    )
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="msrf-tiled-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in args.sides:
        image = mosaic(side, args.fields)
        for fmt in args.formats:
            src = work / f"in-{fmt}-{side}" / f"mosaic{side}.{fmt}"
            src.parent.mkdir(exist_ok=True)
            write_input(image, src)
            out = work / f"out-{fmt}-{side}"
            extra = list(args.extra)
            if args.picture and side == max(args.sides) and fmt == args.formats[0]:
                extra += ["--overlay", "--probabilities"]
            result = run_one(src, out, args.tile, extra)
            mask = out / (f"mosaic{side}.tif" if fmt == "tif" else f"mosaic{side}.png")
            check_mask(mask, side)
            n = len(tile_starts(side, args.tile, 0.25)) ** 2
            row = {
                "format": fmt,
                "side": side,
                "megapixels": round(side * side / 1e6, 3),
                "tiles": n,
                **result,
                "load_average": os.getloadavg()[0],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if "--overlay" in extra:
                dest = picture(out, f"mosaic{side}", image, args.tile, args.picture)
                print(json.dumps({"picture": str(dest), "bytes": dest.stat().st_size}), flush=True)
    base = {r["format"]: r for r in rows if r["side"] == min(args.sides)}
    print()
    print(f"{'format':<6} {'side':>6} {'MPx':>7} {'tiles':>6} {'s':>8} {'s/tile':>7} "
          f"{'peak MiB':>9} {'Δ MiB':>7}")  # fmt: skip
    for r in rows:
        b = base[r["format"]]
        per = (r["seconds"] - b["seconds"]) / max(1, r["tiles"] - b["tiles"]) if r is not b else 0
        print(
            f"{r['format']:<6} {r['side']:>6} {r['megapixels']:>7.2f} {r['tiles']:>6} "
            f"{r['seconds']:>8.1f} {per:>7.3f} {r['peak_rss_mib']:>9.0f} "
            f"{r['peak_rss_mib'] - b['peak_rss_mib']:>7.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
