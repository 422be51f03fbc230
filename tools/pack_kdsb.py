"""Pack the kdsb folder for the GPU machine's 64 MiB carry limit, losslessly for this pipeline.

Images: the alpha channel (always 255) is dropped, and an image whose three channels are equal is
stored as one grey channel (the reader expands grey to RGB); masks are stored as 1-bit PNGs.
The preprocessed 256² arrays are identical to those of the original folder (checked for the val
split). Usage: ``python tools/pack_kdsb.py ../shared/data/kdsb .gpu/kdsb`` (68 MB → 42 MiB).
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for p in sorted(src.rglob("*.png")):
    q = dst / p.relative_to(src)
    q.parent.mkdir(parents=True, exist_ok=True)
    if p.parent.name == "images":
        a = np.asarray(Image.open(p).convert("RGB"))
        grey = (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
        Image.fromarray(a[..., 0] if grey else a).save(q, optimize=True)
    else:
        Image.fromarray(np.asarray(Image.open(p).convert("L")) > 0).convert("1").save(
            q, optimize=True
        )
print(f"{sum(f.stat().st_size for f in dst.rglob('*.png')) / 2**20:.1f} MiB in {dst}")
