"""Import weights of the original Keras MSRF-Net into :class:`msrfnet.MSRFNet`.

A pure function with an explicit mapping: every weighted Keras layer is tagged with its block and
its role (the official code's variable name, e.g. ``dsdf03``/``y2t``, ``decA``/``Attention_B/psi``),
in ``keras_layers.json`` (made from the reference fixture's ``manifest.json`` by
``tools/make_keras_table.py``). Layers are matched by *order* among the weighted layers and checked
by kernel shape, so auto-generated Keras names (``conv2d_57``…) need not match.

Two input formats:

- ``.npz`` as the reference fixture: arrays ``w/{index:04d}/{layer_name}/{j}`` in ``get_weights()``
  order (loaded with ``allow_pickle=False``);
- ``.h5`` as written by ``model.save()``/``save_weights()`` in the official code (needs ``h5py``).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet

__all__ = ["torch_module_name", "keras_layer_table", "keras_to_torch", "from_keras"]

_TABLE = Path(__file__).with_name("keras_layers.json")

_DECODER_ROLES = {
    "Attention_B/theta": "attention.theta",
    "Attention_B/phi": "attention.phi",
    "Attention_B/psi": "attention.psi",
    "Attention_B/up_convT2": "attention.up",
    "Attention_B/bn": "attention.bn",
    "Up3/up_convT1": "up",
    "dual_att_blocks/up_convT4": "dual.up",
    "dual_att_blocks/up_bn": "dual.up_bn",
    "dual_att_blocks/conv3": "dual.conv",
    "dual_att_blocks/bn": "dual.bn",
    "dual_att_blocks/se_block/fc1": "dual.se.fc1",
    "dual_att_blocks/se_block/fc2": "dual.se.fc2",
    "dual_att_blocks/spatial_att_block/conv1": "dual.sa_conv1",
    "dual_att_blocks/spatial_att_block/bn": "dual.sa_bn",
    "dual_att_blocks/spatial_att_block/conv2": "dual.sa_conv2",
    "merge_conv1x1": "merge",
    "res_bn1": "res_bn1",
    "res_conv1": "res_conv1",
    "res_bn2": "res_bn2",
    "res_conv2": "res_conv2",
}
_SHAPE_ROLES = {
    "d0_conv1x1_32": "d0_conv",
    "ss_conv1x1_16": "conv16",
    "c3_conv1x1_1": "c3_conv",
    "ss_conv1x1_8": "conv8",
    "c4_conv1x1_1": "c4_conv",
    "ss_conv1x1_4": "conv4",
    "ss_conv1x1_1_edge_logit": "edge_head",
    "cw_conv1x1": "fusion.cw_conv",
    "edge_conv1x1": "fusion.edge_conv",
    "edge_bn": "fusion.edge_bn",
}
_DECC_ROLES = {
    "up_convT4": "up",
    "fuse_conv1x1": "fuse",
    "conv3": "conv",
    "bn": "bn",
    "conv3_edge": "conv_edge",
}
_HEAD_ROLES = {"head_x": "head_final", "head_pred2": "head_aux2", "head_pred4": "head_aux4"}


def torch_module_name(block: str, role: str) -> str:
    """The :class:`MSRFNet` submodule that holds the Keras layer tagged ``(block, role)``."""
    if m := re.fullmatch(r"E([1-4])", block):
        return f"encoder.e{m[1]}." + role.replace("se_block/", "se.")
    if m := re.fullmatch(r"dsdf(\d\d)", block):
        r = re.fullmatch(r"([xy])([1-5])([ct]?)", role)
        if r is None:
            raise KeyError(f"unknown DSDF role {role!r}")
        stream = {"x": "high", "y": "low", "c": "down", "t": "up"}[r[3] or r[1]]
        return f"msrf.blocks.{int(m[1]) - 1}.{stream}.{int(r[2]) - 1}"
    if block in ("decA", "decB"):
        return {"decA": "d2.", "decB": "d3."}[block] + _DECODER_ROLES[role]
    if block == "decC":
        return "d4." + _DECC_ROLES[role]
    if block == "shape_stream":
        if m := re.fullmatch(r"(resblock|gsc)([123])/(.+)", role):
            return f"shape_stream.{'res' if m[1] == 'resblock' else 'gate'}{m[2]}.{m[3]}"
        return "shape_stream." + _SHAPE_ROLES[role]
    if block == "head":
        return _HEAD_ROLES[role]
    raise KeyError(f"unknown Keras block {block!r}")


@lru_cache(maxsize=1)
def keras_layer_table() -> list[dict]:
    """The 260 weighted layers of the original model in Keras order (block, role, class, shapes)."""
    return json.loads(_TABLE.read_text())["layers"]


def keras_to_torch(cls: str, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """One Keras layer's ``get_weights()`` as PyTorch parameters/buffers (layouts converted)."""
    t = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in arrays]
    if cls in ("Conv2D", "Conv2DTranspose"):
        # Conv2D (kh, kw, in, out) → (out, in, kh, kw);
        # Conv2DTranspose (kh, kw, out, in) → (in, out, kh, kw)
        return {"weight": t[0].permute(3, 2, 0, 1).contiguous(), "bias": t[1]}
    if cls == "Dense":
        return {"weight": t[0].T.contiguous(), "bias": t[1]}
    if cls == "BatchNormalization":
        return dict(zip(("weight", "bias", "running_mean", "running_var"), t))
    raise MSRFError(f"unsupported Keras layer class {cls}")


def _read_npz(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    layers: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            if m := re.fullmatch(r"w/(\d+)/([^/]+)/(\d+)", key):
                layers.setdefault((int(m[1]), m[2]), {})[int(m[3])] = z[key]
    return [(name, [a[j] for j in sorted(a)]) for (_, name), a in sorted(layers.items())]


def _read_h5(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MSRFError(
            f"{path}: reading Keras .h5 files needs h5py (pip install 'msrfnet[keras]')"
        ) from e
    out = []
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for name in root.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            g = root[name]
            weight_names = [
                w.decode() if isinstance(w, bytes) else w for w in g.attrs.get("weight_names", [])
            ]
            if weight_names:
                out.append((name, [np.asarray(g[w]) for w in weight_names]))
    return out


def from_keras(path: str | Path, variant: str = "official", num_classes: int = 1) -> MSRFNet:
    """Build an :class:`MSRFNet` with the weights of an original Keras MSRF-Net.

    Args:
        path: a ``.npz`` in the reference-fixture format or a Keras ``.h5`` (model or weights).
        variant: must be ``"official"``: only that variant has the Keras layer graph.
        num_classes: 1 for the original.

    Raises:
        MSRFError: the file is missing, unreadable, or its layers do not match the original model.
    """
    path = Path(path)
    if variant != "official":
        raise MSRFError(
            f"{path}: Keras weights fit only variant='official' (the Keras layer graph), "
            f"not {variant!r}"
        )
    if not path.is_file():
        raise MSRFError(f"{path}: no such file")
    try:
        layers = (
            _read_h5(path) if path.suffix.lower() in (".h5", ".hdf5", ".keras") else _read_npz(path)
        )
    except MSRFError:
        raise
    except Exception as e:
        raise MSRFError(f"{path}: cannot read Keras weights ({type(e).__name__}: {e})") from e
    table = keras_layer_table()
    if len(layers) != len(table):
        raise MSRFError(
            f"{path}: {len(layers)} weighted layers, the original MSRF-Net (10 chained DSDF "
            f"blocks) has {len(table)}"
        )
    model = MSRFNet(num_classes=num_classes, variant="official")
    state = {}
    for (name, arrays), row in zip(layers, table):
        got = [list(a.shape) for a in arrays]
        if got != row["keras_shapes"]:
            raise MSRFError(
                f"{path}: layer {name} has shapes {got}, expected {row['keras_shapes']} "
                f"for {row['block']}/{row['role']} ({row['cls']})"
            )
        prefix = torch_module_name(row["block"], row["role"])
        for k, v in keras_to_torch(row["cls"], arrays).items():
            state[f"{prefix}.{k}"] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise MSRFError(
            f"{path}: weights do not cover the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )
    return model
