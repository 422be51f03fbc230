"""Regenerate ``src/msrfnet/keras_layers.json`` from the Keras reference fixture's manifest.

The table lists the 260 weighted layers of the original Keras MSRF-Net (variant A) in Keras'
layer order, with the block/role tags and kernel shapes that ``msrfnet.keras_import`` needs to
map each layer onto the PyTorch model. Usage: ``python tools/make_keras_table.py MANIFEST``.
"""

import json
import sys
from pathlib import Path

manifest = json.loads(Path(sys.argv[1]).read_text())
rows = [
    {"index": l["index"], "name": l["name"], "cls": l["cls"], "block": l["block"], "role": l["role"],
     "keras_shapes": l["keras_shapes"]}
    for l in manifest["weighted_layers"]
]
out = Path(__file__).resolve().parents[1] / "src" / "msrfnet" / "keras_layers.json"
out.write_text(json.dumps({"source": manifest["description"], "layers": rows}, separators=(",", ":")) + "\n")
print(f"wrote {len(rows)} layers to {out}")
