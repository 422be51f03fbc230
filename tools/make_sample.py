"""Re-create the bundled demo data ``src/msrfnet/sample/`` from the 2018 DSB (kdsb) folder.

    python tools/make_sample.py [--src /work/shared/data/kdsb] [--dst src/msrfnet/sample]

Deterministic: per split, the images are classed as grey (all channels equal) or colour, each
class is sorted by file name and evenly spaced picks are taken (train 14 grey + 6 colour, val and
test 3 grey + 2 colour each; kdsb itself is 84 % grey). Each image is resized to 256×256 with
Pillow Lanczos and saved as RGB PNG; each mask is resized the same way as a grey image and
binarised at 128 (the training pipeline's rule), then saved as a 0/255 PNG. The README.md listing
the source files is rewritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from msrfnet.data.files import list_image_files
from msrfnet.data.io import foreground_to_grey, read_image, read_mask
from msrfnet.data.preprocess import resize_image, resize_mask

SIZE = 256
PICKS = {"train": (14, 6), "val": (3, 2), "test": (3, 2)}  # (grey, colour)

README = """# Bundled demo data: 2018 Data Science Bowl nuclei sample

{total} image/mask pairs ({counts} train/val/test) taken from the same splits of the kdsb copy
of the 2018 Data Science Bowl stage1_train set (BBBC038v1), a mix of grey fluorescence and colour
(bright-field / histology) images. Used when no `--data` is given and no `./data/kdsb` exists, so
that every command can be tried out of the box; far too small to train a useful model.

Pre-processed by `tools/make_sample.py`: images resized to 256x256 with Pillow Lanczos and saved
as RGB PNG (alpha dropped); masks (union of the nucleus masks) resized the same way and
binarised at 128, saved as 0/255 grey PNG. Layout: `{{train,val,test}}/{{images,masks}}/<id>.png`.

## Licence and citation

CC0 1.0 Universal (public domain dedication), see LICENSE. Source: Broad Bioimage Benchmark
Collection, BBBC038v1 (https://bbbc.broadinstitute.org/BBBC038). Please cite:
Caicedo J. C. et al., "Nucleus segmentation across imaging experiments: the 2018 Data Science
Bowl", Nature Methods 16, 1247-1253 (2019).

## Source files (stage1_train image ids; kdsb split, colour class, original HxW)

{listing}
"""


def _even_picks(items: list[Path], k: int) -> list[Path]:
    n = len(items)
    return [items[int((i + 0.5) * n / k)] for i in range(k)] if k else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/work/shared/data/kdsb"))
    parser.add_argument(
        "--dst", type=Path, default=Path(__file__).resolve().parents[1] / "src/msrfnet/sample"
    )
    args = parser.parse_args()
    rows: list[str] = []
    counts: list[int] = []
    for split, (n_grey, n_colour) in PICKS.items():
        grey, colour = [], []
        for path in list_image_files(args.src / split / "images"):
            rgb = read_image(path)
            same = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
                rgb[..., 1], rgb[..., 2]
            )
            (grey if same else colour).append(path)
        chosen = [(p, "grey") for p in _even_picks(grey, n_grey)]
        chosen += [(p, "colour") for p in _even_picks(colour, n_colour)]
        for sub in ("images", "masks"):
            out = args.dst / split / sub
            out.mkdir(parents=True, exist_ok=True)
            for old in out.glob("*.png"):
                old.unlink()
        for path, kind in sorted(chosen):
            rgb = read_image(path)
            mask_path = next(
                p for p in list_image_files(args.src / split / "masks") if p.stem == path.stem
            )
            grey_mask = resize_mask(foreground_to_grey(read_mask(mask_path)), SIZE)
            image_out = args.dst / split / "images" / f"{path.stem}.png"
            Image.fromarray(resize_image(rgb, SIZE)).save(image_out, optimize=True)
            Image.fromarray(foreground_to_grey(grey_mask >= 128)).save(
                args.dst / split / "masks" / f"{path.stem}.png", optimize=True
            )
            rows.append(f"- `{path.stem}` ({split}, {kind}, {rgb.shape[0]}x{rgb.shape[1]})")
        counts.append(len(chosen))
    text = README.format(
        total=sum(counts), counts="/".join(map(str, counts)), listing="\n".join(rows)
    )
    (args.dst / "README.md").write_text(text)


if __name__ == "__main__":
    main()
