"""The proof of fidelity: msrfnet.from_keras on the Keras reference fixture reproduces every stored
intermediate and output of the original Keras model (spec: fixture README, "Suggested test")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _shared import require_fixture

import msrfnet

ATOL, RTOL = 1e-5, 1e-4  # |got − ref| ≤ 1e-5 + 1e-4·|ref|, the fixture README's suggestion


@pytest.fixture(scope="module")
def fixture():
    path = require_fixture()
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("w/")}
    return path, arrays


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() if a.ndim == 4 else torch.from_numpy(a)


def run_with_intermediates(model: msrfnet.MSRFNet, image, canny) -> dict[str, torch.Tensor]:
    """Forward with hooks that capture the tensors the fixture stores under ``mid/``."""
    got: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda _m, _i, out: got.__setitem__(name, out)

    hooks = [
        getattr(model.encoder, f"e{s}").register_forward_hook(keep(f"E{s}")) for s in range(1, 5)
    ]
    for n, block in enumerate(model.msrf.blocks, 1):
        hooks.append(block.register_forward_hook(keep(f"dsdf{n:02d}")))
    hooks.append(model.msrf.register_forward_hook(keep("Y")))
    hooks.append(model.shape_stream.gate1.register_forward_hook(keep("ss_alpha1")))
    hooks.append(model.shape_stream.gate2.register_forward_hook(keep("ss_alpha2")))
    hooks.append(model.shape_stream.fusion.register_forward_hook(keep("edge")))
    for name, mod in (("decA", model.d2), ("decB", model.d3), ("decC", model.d4)):
        hooks.append(mod.register_forward_hook(keep(name)))
    try:
        with torch.no_grad():
            out = model(image, canny)
    finally:
        for h in hooks:
            h.remove()
    mids = {f"mid/{k}": v for k, v in got.items() if not k.startswith(("dsdf", "Y"))}
    for n in range(1, 11):
        high, low = got[f"dsdf{n:02d}"]
        mids[f"mid/dsdf{n:02d}/high"], mids[f"mid/dsdf{n:02d}/low"] = high, low
    for s, y in enumerate(got["Y"], 1):
        mids[f"mid/Y{s}"] = y
    p2, p4 = out.aux_probabilities()
    mids.update(
        {
            "mid/edge_logit": out.edge,
            "mid/logit_x": out.final,
            "mid/logit_pred2_head": out.aux2,
            "mid/logit_pred4_head": out.aux4,
            "out/x": torch.sigmoid(out.final),
            "out/edge_out": torch.sigmoid(out.edge),
            "out/pred2": p2,
            "out/pred4": p4,
        }
    )
    return mids


def compare(
    got: dict[str, torch.Tensor], ref: dict[str, np.ndarray], prefix: str = ""
) -> dict[str, float]:
    diffs = {}
    for key, t in got.items():
        r = nchw(ref[prefix + key])
        assert t.shape == r.shape, f"{key}: shape {tuple(t.shape)} vs reference {tuple(r.shape)}"
        err = (t - r).abs()
        diffs[key] = err.max().item()
        bad = err > ATOL + RTOL * r.abs()
        assert not bad.any(), (
            f"{prefix}{key}: max |diff| {diffs[key]:.3g} exceeds 1e-5 + 1e-4·|ref| at "
            f"{bad.sum().item()} elements"
        )
    return diffs


def test_every_block_matches_keras(fixture, capsys):
    path, ref = fixture
    model = msrfnet.from_keras(path).eval()
    got = run_with_intermediates(model, nchw(ref["input/image"]), nchw(ref["input/canny"]))
    assert len(got) == 4 + 20 + 4 + 2 + 1 + 3 + 4 + 4  # every mid/ and out/ key of the fixture
    stored = {k for k in ref if k.startswith(("mid/", "out/"))}
    assert stored == set(got), f"fixture keys not compared: {stored - set(got)}"
    diffs = compare(got, ref)
    with capsys.disabled():
        worst = max(diffs, key=diffs.get)
        print(f"\n[fixture] {len(diffs)} tensors match; worst {worst}: {diffs[worst]:.2e}")


def test_canny_branch_matches_keras(fixture):
    """The alt/ case feeds Canny(10, 100) edges (the faithful (10, 1000) map is empty at 64²)."""
    path, ref = fixture
    assert ref["alt/input/canny"].sum() > 0
    model = msrfnet.from_keras(path).eval()
    got = run_with_intermediates(model, nchw(ref["input/image"]), nchw(ref["alt/input/canny"]))
    alt_keys = [
        k[len("alt/") :] for k in ref if k.startswith("alt/") and not k.startswith("alt/input")
    ]
    assert sorted(alt_keys) == ["mid/decC", "mid/edge", "mid/logit_x", "out/x"]
    compare({k: got[k] for k in alt_keys}, ref, prefix="alt/")
    # and the canny input really changes the answer
    assert not np.allclose(ref["alt/out/x"], ref["out/x"])


def test_from_keras_rejects_bad_input(tmp_path, fixture):
    path, _ = fixture
    with pytest.raises(msrfnet.MSRFError, match="no such file"):
        msrfnet.from_keras(tmp_path / "missing.npz")
    with pytest.raises(msrfnet.MSRFError, match="variant='official'"):
        msrfnet.from_keras(path, variant="clean")
    with np.load(path, allow_pickle=False) as z:
        keys = [k for k in z.files if k.startswith("w/")]
        partial = {k: z[k] for k in keys[:-2]}  # drop the last layer's arrays
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(msrfnet.MSRFError, match="weighted layers"):
        msrfnet.from_keras(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(msrfnet.MSRFError, match="cannot read"):
        msrfnet.from_keras(tmp_path / "junk.npz")


def test_from_keras_reads_h5(tmp_path, fixture):
    """A Keras ``save_weights`` file carries the same arrays under layer-name groups."""
    h5py = pytest.importorskip("h5py")
    path, ref = fixture
    from msrfnet.model.keras import _read_npz

    layers = _read_npz(path)
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.attrs["layer_names"] = [n.encode() for n, _ in layers]
        for name, arrays in layers:
            g = f.create_group(name)
            wn = [f"{name}/w{j}:0".encode() for j in range(len(arrays))]
            g.attrs["weight_names"] = wn
            for w, a in zip(wn, arrays):
                g.create_dataset(w.decode(), data=a)
    model = msrfnet.from_keras(tmp_path / "w.h5").eval()
    with torch.no_grad():
        x = torch.sigmoid(model(nchw(ref["input/image"]), nchw(ref["input/canny"])).final)
    assert (x - nchw(ref["out/x"])).abs().max() < 1e-5
