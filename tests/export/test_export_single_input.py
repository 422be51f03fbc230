"""``msrf export`` writes the one-input model by default: uint8 image in, probability out, the
Canny map in the graph; onnxruntime equals the two-input PyTorch path on real images."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from _model_helpers import make_weights

from msrfnet.cli import main
from msrfnet.data import read_image, sample_root
from msrfnet.data.preprocess import model_inputs
from msrfnet.inference.runners import OnnxRunner, TorchRunner
from msrfnet.model.loading import load_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    weights = make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=32)
    out = tmp_path_factory.mktemp("out") / "one.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--image-size", "32"]) == 0
    return weights, out


def test_one_uint8_input_and_probability_output(exported):
    _, out = exported
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    assert [o.name for o in session.get_outputs()] == ["probability"]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["image_size"] == "32" and "in the graph" in meta["preprocessing"]


def test_onnxruntime_equals_the_two_input_pytorch_path(exported):
    weights, out = exported
    files = sorted((sample_root() / "val" / "images").glob("*.png"))[:4]
    model, cfg, _ = load_model(weights)
    images, canny = model_inputs([read_image(f) for f in files], 32, cfg.canny_low, cfg.canny_high)
    ref = TorchRunner(model, "cpu", exact=True)(images, canny)
    runner = OnnxRunner(out)
    assert runner.single_input
    got = runner(images, np.zeros_like(canny))  # the graph computes its own Canny map
    assert np.abs(got - ref).max() < 1e-4


def test_two_inputs_flag_keeps_the_old_graph(exported, tmp_path):
    weights, _ = exported
    out = tmp_path / "two.onnx"
    assert (
        main(
            [
                "export",
                "--weights",
                str(weights),
                "--out",
                str(out),
                "--image-size",
                "32",
                "--two-inputs",
            ]
        )
        == 0
    )
    names = sorted(i.name for i in ort.InferenceSession(str(out)).get_inputs())
    assert names == ["canny", "image"]
