"""Regenerate ``src/msrfnet/keras_layers.json`` from the Keras reference fixture's manifest.

The table lists the 260 weighted layers of the original Keras MSRF-Net (variant A) in Keras'
layer order, with the block/role tags and kernel shapes that ``msrfnet.model.keras`` needs to
map each layer onto the PyTorch model. Usage: ``python tools/make_keras_table.py MANIFEST``.
"""

import json
import sys
from pathlib import Path

manifest = json.loads(Path(sys.argv[1]).read_text())
rows = [
    {
        "index": layer["index"],
        "name": layer["name"],
        "cls": layer["cls"],
        "block": layer["block"],
        "role": layer["role"],
        "keras_shapes": layer["keras_shapes"],
    }
    for layer in manifest["weighted_layers"]
]
out = Path(__file__).resolve().parents[1] / "src" / "msrfnet" / "model" / "keras_layers.json"
out.write_text(
    json.dumps({"source": manifest["description"], "layers": rows}, separators=(",", ":")) + "\n"
)
print(f"wrote {len(rows)} layers to {out}")
