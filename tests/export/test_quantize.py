"""``msrfnet.export.onnx_int8``: int8 ONNX that runs, stays close to float32, keeps the metadata,
and fails clearly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _model_helpers import make_weights

from msrfnet.accel.cpu import flush_denormals
from msrfnet.data import read_image, sample_root
from msrfnet.data.preprocess import model_inputs
from msrfnet.errors import MSRFError
from msrfnet.export.onnx import export_onnx
from msrfnet.export.onnx_int8 import UPSAMPLING, calibration_files, fold_pads, quantize_onnx
from msrfnet.inference.runners import OnnxRunner
from msrfnet.model.layers import SameConvTranspose2d
from msrfnet.model.upsampling import SubPixelConvTranspose2d

SIZE = 32


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    weights = make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=SIZE)
    out = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    return export_onnx(weights, out, image_size=SIZE, upsampling=UPSAMPLING)


@pytest.fixture(scope="module")
def int8(fp32, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    return quantize_onnx(fp32, out, sample_root() / "train" / "images", n=4)


def _test_inputs():
    files = sorted((sample_root() / "test" / "images").glob("*.png"))[:4]
    return model_inputs([read_image(f) for f in files], SIZE, 10, 1000)


@pytest.mark.parametrize("target", ["onnx", "inductor"])
@pytest.mark.parametrize("kernel", [2, 3, 4])
def test_export_subpixel_equals_transposed_conv(kernel, target):
    torch.manual_seed(kernel)
    layer = SameConvTranspose2d(5, 6, kernel).eval()
    export = SubPixelConvTranspose2d(5, 6, kernel, target=target).eval()
    export.load_state_dict(layer.state_dict())
    export.freeze()
    x = torch.randn(2, 5, 6, 10)
    with torch.no_grad():
        assert torch.allclose(export(x), layer(x), atol=1e-5)


def test_fold_pads_moves_zero_pad_into_conv(fp32, tmp_path):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # as in quantize_onnx: the exported pads are a chain of nodes until constant-folded
    quant_pre_process(str(fp32), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
    model = onnx.load(str(tmp_path / "pre.onnx"))
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    assert fold_pads(model) > 0
    assert not any(n.op_type == "Pad" for n in model.graph.node)
    folded = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {
        "image": rng.random((1, 3, SIZE, SIZE), dtype=np.float32),
        "canny": (rng.random((1, 1, SIZE, SIZE)) < 0.1).astype(np.float32),
    }
    for a, b in zip(session.run(None, feed), folded.run(None, feed)):
        assert np.abs(a - b).max() < 1e-4


def test_int8_is_quantized_and_close_to_fp32(fp32, int8):
    model = onnx.load(str(int8))
    ops = {n.op_type for n in model.graph.node}
    assert "QuantizeLinear" in ops and "ConvTranspose" not in [
        n.op_type for n in model.graph.node if n.name.startswith("/msrf")
    ]
    images, canny = _test_inputs()
    with flush_denormals():
        ref, got = OnnxRunner(fp32)(images, canny), OnnxRunner(int8)(images, canny)
    assert got.shape == ref.shape == (len(images), SIZE, SIZE) and np.isfinite(got).all()
    # a working quantization of this random-weights model: mean |Δp| ~0.01, masks ~99 % equal;
    # a broken one (wrong scales, a mangled layer) gives ~0.1-0.5 and ~50 %
    assert np.abs(got - ref).mean() < 0.03
    assert np.mean((got >= 0.5) == (ref >= 0.5)) > 0.95
    # the model is not trivially constant (the check above would then mean nothing)
    assert 0.1 < np.mean(ref >= 0.5) < 0.9


def test_metadata_kept_with_quantization_entry(fp32, int8):
    src = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    got = {p.key: p.value for p in onnx.load(str(int8), load_external_data=False).metadata_props}
    assert {k: got[k] for k in src} == src
    assert "int8" in got["quantization"] and "4 images" in got["quantization"]
    assert OnnxRunner(int8).metadata["image_size"] == str(SIZE)


def test_missing_files_are_named(fp32, tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(MSRFError, match="nope.onnx: no such ONNX file"):
        quantize_onnx(missing, tmp_path / "o.onnx", sample_root() / "train" / "images")
    with pytest.raises(MSRFError, match="nothere: no such calibration folder"):
        quantize_onnx(fp32, tmp_path / "o.onnx", tmp_path / "nothere")
    with pytest.raises(MSRFError, match="x.png: no such calibration image"):
        quantize_onnx(fp32, tmp_path / "o.onnx", [tmp_path / "x.png"])
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(MSRFError, match="bad.onnx: not a readable ONNX model"):
        quantize_onnx(
            tmp_path / "bad.onnx",
            tmp_path / "o.onnx",
            sample_root() / "train" / "images",
        )
    assert not (tmp_path / "o.onnx").exists()


def test_already_quantized_is_refused(int8, tmp_path):
    with pytest.raises(MSRFError, match="already quantized"):
        quantize_onnx(int8, tmp_path / "o.onnx", sample_root() / "train" / "images")


def test_calibration_files_prefer_train_split():
    files = calibration_files(sample_root(), n=3)
    assert len(files) == 3 and all(f.parent == sample_root() / "train" / "images" for f in files)


def test_cli_export_int8_arguments(monkeypatch, tmp_path):
    import msrfnet.export.onnx_int8 as quantize_mod
    from msrfnet.cli import main

    calls = []
    monkeypatch.setattr(quantize_mod, "export_int8", lambda *a, **k: calls.append((a, k)))
    assert (
        main(
            [
                "export",
                "--int8",
                "--out",
                "q.onnx",
                "--calibration",
                str(tmp_path),
                "--calibration-count",
                "8",
            ]
        )
        == 0
    )
    expected = {
        "calibration": str(tmp_path),
        "n": 8,
        "opset": 17,
        "image_size": None,  # the checkpoint's
        "overwrite": False,
    }
    assert calls == [((None, "q.onnx"), expected)]
