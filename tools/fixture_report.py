"""Print the max |difference| between msrfnet and the Keras reference fixture for every stored
tensor.

Usage: ``python tools/fixture_report.py [path/to/msrf_keras_reference.npz]`` (default:
../shared/...). Uses the same hooks as tests/model/test_fixture_equivalence.py.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_fixture_equivalence import nchw, run_with_intermediates  # noqa: E402

import msrfnet  # noqa: E402

path = (
    Path(sys.argv[1])
    if len(sys.argv) > 1
    else Path(__file__).resolve().parents[2]
    / "shared/fixtures/keras_reference/msrf_keras_reference.npz"
)
ref = dict(np.load(path, allow_pickle=False))
model = msrfnet.from_keras(path).eval()
for label, canny_key, prefix in (
    ("Canny(10, 1000) input", "input/canny", ""),
    ("alt: Canny(10, 100) input", "alt/input/canny", "alt/"),
):
    got = run_with_intermediates(model, nchw(ref["input/image"]), nchw(ref[canny_key]))
    print(f"## {label}")
    print("| tensor | max abs diff | max abs ref |")
    print("|---|---|---|")
    for key, t in got.items():
        if prefix + key not in ref:
            continue
        r = nchw(ref[prefix + key])
        print(f"| {prefix}{key} | {(t - r).abs().max().item():.2e} | {r.abs().max().item():.3g} |")
