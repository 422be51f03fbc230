"""``msrf export``: ONNX with dynamic batch/height/width matching PyTorch; ``predict --onnx``."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _model_helpers import make_weights, mixed_folder

import msrfnet.export.onnx as export_mod
from msrfnet.accel.cpu import flush_denormals
from msrfnet.cli import main
from msrfnet.errors import MSRFError
from msrfnet.export.onnx import export_onnx
from msrfnet.inference.predict import predict
from msrfnet.model.loading import load_model
from msrfnet.option_groups import ModelSource, Outputs

SIZE = 32


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=SIZE)


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory):
    # no image_size: the checkpoint's (SIZE), which the metadata test checks
    return export_onnx(weights, tmp_path_factory.mktemp("onnx") / "m.onnx")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def test_graph_names_dims_and_metadata(exported):
    model = onnx.load(str(exported), load_external_data=False)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert dims == {
        "image": ["batch", 3, "height", "width"],
        "canny": ["batch", 1, "height", "width"],
        "final": ["batch", 1, "height", "width"],
        "edge": ["batch", 1, "height", "width"],
        "aux2": ["batch", 1, "height/2", "width/2"],
        "aux4": ["batch", 1, "height/4", "width/4"],
    }
    meta = {p.key: p.value for p in model.metadata_props}
    assert (
        meta["image_size"] == str(SIZE)
        and meta["canny_low"] == "10"
        and meta["canny_high"] == "1000"
    )
    assert (
        meta["threshold"] == "0.5" and meta["variant"] == "official" and "msrfnet_version" in meta
    )
    assert int(meta["opset"]) >= 17 and meta["exporter"] == "torchscript"


@pytest.mark.parametrize("shape", [(1, SIZE, SIZE), (3, 48, 40)])
def test_onnxruntime_matches_torch(weights, exported, shape):
    b, h, w = shape
    model, _, _ = load_model(weights)
    g = torch.Generator().manual_seed(b * h * w)
    image = torch.rand(b, 3, h, w, generator=g)
    canny = (torch.rand(b, 1, h, w, generator=g) < 0.1).float()
    with flush_denormals(), torch.inference_mode():
        ref = [t.numpy() for t in model(image, canny)]
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": image.numpy(), "canny": canny.numpy()})
    assert [o.name for o in session.get_outputs()] == ["final", "edge", "aux2", "aux4"]
    for a, o in zip(ref, got):
        assert a.shape == o.shape
        assert np.abs(_sigmoid(a) - _sigmoid(o)).max() <= 1e-4


def test_predict_onnx_matches_torch(weights, exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        torch.cuda, "is_available", lambda: False
    )  # float32 on both sides, not bf16
    sizes = mixed_folder(tmp_path / "in")
    # no --image-size: the ONNX path must read 32 from the model's metadata
    assert (
        main(
            [
                "predict",
                str(tmp_path / "in"),
                "--onnx",
                str(exported),
                "--out",
                str(tmp_path / "onnx"),
            ]
        )
        == 0
    )
    assert f"image size {SIZE}" in capsys.readouterr().out
    predict(
        [str(tmp_path / "in")],
        model=ModelSource(weights=weights, exact=True),
        outputs=Outputs(out=tmp_path / "torch"),
    )
    foreground = 0
    for stem, size in sizes.items():
        a = cv2.imread(str(tmp_path / "onnx" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "torch" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape == tuple(size)
        assert int((a != b).sum()) <= 3  # pixels within ~1e-6 of the threshold may flip
        foreground += int((b == 255).sum())
    assert foreground > 0


def test_cli_export_arguments(weights, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(export_mod, "export_onnx", lambda *a, **k: calls.append((a, k)))
    assert (
        main(
            [
                "export",
                "--weights",
                str(weights),
                "--out",
                "x.onnx",
                "--image-size",
                "64",
                "--opset",
                "18",
            ]
        )
        == 0
    )
    expected = {"opset": 18, "image_size": 64, "overwrite": False, "single_input": True}
    assert calls == [((str(weights), "x.onnx"), expected)]
    calls.clear()
    assert main(["export", "--weights", str(weights), "--out", "x.onnx", "--two-inputs"]) == 0
    assert calls[0][1]["single_input"] is False
    assert calls[0][1]["image_size"] is None  # the checkpoint's size, not a tracing default
    monkeypatch.undo()
    assert (
        main(
            [
                "export",
                "--weights",
                str(tmp_path / "none.safetensors"),
                "--out",
                str(tmp_path / "y.onnx"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.safetensors" in err[0]
    with pytest.raises(MSRFError, match="opset 13"):
        export_onnx(weights, tmp_path / "x.onnx", opset=13)
    with pytest.raises(MSRFError, match="multiple of 8"):
        export_onnx(weights, tmp_path / "x.onnx", image_size=20)
    assert not list(tmp_path.iterdir())


def test_failed_verification_keeps_nothing(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "TOLERANCE", -1.0)
    out = tmp_path / "bad.onnx"
    with pytest.raises(MSRFError, match=r"bad.onnx: ONNX output final differs from PyTorch"):
        export_onnx(weights, out, image_size=8)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_falls_back_to_dynamo_exporter(weights, tmp_path, monkeypatch):
    """The control flow of the fallback (the dynamo exporter itself: the slow test below)."""
    real = export_mod._export_torchscript
    calls = []

    def broken(*args):
        raise RuntimeError("unsupported operator (simulated)")

    def stand_in(model, args, path, opset):
        calls.append(opset)
        real(model, args, path, opset)

    monkeypatch.setattr(export_mod, "_export_torchscript", broken)
    monkeypatch.setattr(export_mod, "_export_dynamo", stand_in)
    monkeypatch.setattr(export_mod, "CHECK_SHAPE", (2, 8, 16))
    out = export_onnx(weights, tmp_path / "fallback.onnx", image_size=8)
    assert calls == [18]
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["exporter"] == "dynamo" and meta["opset"] == "18"


def test_dynamo_exporter_end_to_end(weights, tmp_path, monkeypatch):
    """The fallback exporter on the real model (~50 s on 2 cores, run in CI: an in-place op on a
    view once made torch.export specialise the batch size, and only this test saw it)."""

    def broken(*args):
        raise RuntimeError("simulated")

    monkeypatch.setattr(export_mod, "_export_torchscript", broken)
    out = export_onnx(weights, tmp_path / "dynamo.onnx", image_size=SIZE)  # verified inside
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in onnx.load(str(out), load_external_data=False).graph.input
    }
    assert dims["image"] == ["batch", 3, "height", "width"]


def test_msrf_test_on_onnx_matches_torch(weights, exported, tmp_path, capsys, monkeypatch):
    """``msrf test --onnx`` evaluates an exported model with its metadata's preprocessing: the same
    metrics as the float32 PyTorch model it came from."""
    import json

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["test", "--onnx", str(exported), "--out", str(tmp_path / "onnx")]) == 0
    assert (
        main(["test", "--weights", str(weights), "--exact", "--out", str(tmp_path / "torch")]) == 0
    )
    a = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    b = json.loads((tmp_path / "torch" / "metrics.json").read_text())
    assert a["numerics"] == "onnxruntime, float32" and b["numerics"] == "float32"
    assert a["image_size"] == b["image_size"] == SIZE and a["n_images"] == b["n_images"]
    assert 0 < b["dsc"] < 1 and abs(a["dsc"] - b["dsc"]) < 1e-3
    assert (
        main(
            [
                "test",
                "--onnx",
                str(exported),
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
