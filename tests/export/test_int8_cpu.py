"""``msrfnet.export.pt2_int8``: exact BN removal, a graph that is int8 throughout, and its
AOTInductor package."""

from __future__ import annotations

import pytest
import torch
from _logs import said
from _model_helpers import make_weights
from torch import nn

from msrfnet.data import read_image, sample_root
from msrfnet.data.preprocess import model_inputs

pytest.importorskip("torchao")
from msrfnet.export.pt2_int8 import fold_batch_norms, quantize_model  # noqa: E402

SIZE = 32


class _SharedConvBN(nn.Module):
    """D2/D3's shape: a conv whose output feeds a BN *and* a residual sum, then conv → BN alone."""

    def __init__(self):
        super().__init__()
        self.merge, self.bn1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8, eps=1e-3)
        self.conv, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, eps=1e-3)

    def forward(self, x):
        m = self.merge(x)
        return m + self.bn2(self.conv(torch.relu(self.bn1(m))))


def _randomised(module):
    torch.manual_seed(0)
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.001, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return module.eval()


def test_fold_batch_norms_is_exact_where_torchao_folding_is_not():
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from msrfnet.export.pt2_int8 import int8_quantizer

    model = _randomised(_SharedConvBN())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        raw = torch.export.export(model, (x,), strict=True).module()
        gm = torch.export.export(model, (x,), strict=True).module()
        assert fold_batch_norms(gm, x) == 2
        assert not any("batch_norm" in str(n.target) for n in gm.graph.nodes)
        assert (gm(x) - ref).abs().max() < 1e-5
        # observers alone must not change the function: with our folding they do not; with
        # torchao's own (the conv feeding bn1 also feeds the sum) they did — the reason for the pass
        ours = prepare_pt2e(gm, int8_quantizer())(x)
        theirs = prepare_pt2e(raw, int8_quantizer())(x)
    assert (ours - ref).abs().max() < 1e-5
    assert (theirs - ref).abs().max() > 1e-2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=SIZE)


def _inputs(split: str, n: int):
    files = sorted((sample_root() / split / "images").glob("*.png"))[:n]
    return model_inputs([read_image(f) for f in files], SIZE, 10, 1000)


@pytest.fixture(scope="module")
def quantized(weights):
    from msrfnet.model.loading import load_model

    model, _, _ = load_model(weights)
    images, canny = _inputs("train", 3)
    feeds = [
        (
            torch.from_numpy(images[i : i + 1]).float() / 255,
            torch.from_numpy(canny[i : i + 1]).float(),
        )
        for i in range(3)
    ]
    return model, quantize_model(model, feeds)


def _test_batch():
    images, canny = _inputs("test", 4)
    return torch.from_numpy(images).float() / 255, torch.from_numpy(canny).float()


def test_quantized_graph_is_int8_throughout(quantized):
    model, q = quantized
    nodes = [n for n in q.graph.nodes if n.op == "call_function"]

    def dequantized(n):
        return "dequantize" in str(getattr(n, "target", ""))

    convs = [n for n in nodes if n.target == torch.ops.aten.conv2d.default]
    cats = [n for n in nodes if n.target == torch.ops.aten.cat.default]
    assert len(convs) > 200
    # every conv reads int8 activations (strict export: the quantizer found them all) ...
    assert all(dequantized(n.args[0]) for n in convs)
    # ... and every concatenation is of int8 tensors (the dense blocks' inputs)
    assert cats and all(all(dequantized(a) for a in n.args[0]) for n in cats)
    assert not any("batch_norm" in str(n.target) for n in nodes)

    # and it computes what the model computes, to int8 precision (the torchao BN folding bug gave
    # mean |Δp| ~0.1 and whole images wrong on the real weights)
    x, c = _test_batch()
    with torch.no_grad():
        ref = torch.sigmoid(model(x, c).final)
        got = torch.cat([torch.sigmoid(q(x[i : i + 1], c[i : i + 1])) for i in range(len(x))])
    assert (got - ref).abs().mean() < 0.03 and ((got >= 0.5) == (ref >= 0.5)).float().mean() > 0.95
    assert (
        0.1 < (ref >= 0.5).float().mean() < 0.9
    )  # not a constant model: the check above means something


# --- the AOTInductor package: msrf export --int8 --out X.pt2, msrf test/predict --pt2 -------------


@pytest.fixture(scope="module")
def package(weights, tmp_path_factory):
    from msrfnet.export.pt2_int8 import export_int8_pt2

    out = tmp_path_factory.mktemp("pt2") / "int8.pt2"
    with said() as lines:
        export_int8_pt2(weights, out, calibration=sample_root() / "train" / "images", n=3)
    return out, lines


def test_package_computes_the_quantized_graph(package, quantized):
    from msrfnet.accel.pt2_runner import PT2_FORMAT, Pt2Runner

    path, lines = package
    assert any(line.startswith(f"wrote {path}") and "mean |Δprobability|" in line for line in lines)
    runner = Pt2Runner(path)
    assert (
        runner.metadata["format"] == PT2_FORMAT
        and runner.size == SIZE
        and "int8" in runner.numerics
    )
    images, canny = _inputs("test", 4)
    got = runner(images, canny)  # uint8 in, B×S×S probabilities out, as TorchRunner
    x, c = _test_batch()
    with torch.no_grad():
        ref = torch.cat(
            [torch.sigmoid(quantized[1](x[i : i + 1], c[i : i + 1])) for i in range(len(x))]
        )[:, 0].numpy()
    assert got.shape == (4, SIZE, SIZE)
    # oneDNN's int8 kernels round differently from the reference graph's float simulation (this
    # random model has many pixels near 0.5: its masks agree less than the trained model's ≥ 99.7 %)
    assert abs(got - ref).mean() < 0.01 and ((got >= 0.5) == (ref >= 0.5)).mean() > 0.97


def test_test_and_predict_run_the_package(package, tmp_path):
    from msrfnet.cli import main
    from msrfnet.inference.test import test
    from msrfnet.option_groups import ModelSource

    path, _ = package
    result = test(sample_root(), model=ModelSource(pt2=str(path)), out=tmp_path / "test")
    assert "int8" in result["numerics"] and 0 <= result["dsc"] <= 1
    images = sample_root() / "test" / "images"
    assert main(["predict", str(images), "--pt2", str(path), "--out", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == len(list(images.glob("*.png")))
    # one model per run, and the package's own input size
    assert main(["predict", str(images), "--pt2", str(path), "--weights", "x.safetensors"]) == 2
    assert main(["predict", str(images), "--pt2", str(path), "--image-size", str(2 * SIZE)]) == 2


def test_pt2_errors_name_the_file(tmp_path, capsys):
    from msrfnet.accel.pt2_runner import Pt2Runner
    from msrfnet.cli import main
    from msrfnet.errors import MSRFError
    from msrfnet.export.pt2_int8 import export_int8_pt2

    with pytest.raises(MSRFError, match="no such .pt2 package"):
        Pt2Runner(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(MSRFError, match="junk.pt2: not a loadable AOTInductor package"):
        Pt2Runner(junk)
    with pytest.raises(MSRFError, match="needs the .pt2 suffix"):
        export_int8_pt2(None, tmp_path / "x.onnx")
    assert main(["export", "--out", str(tmp_path / "x.pt2")]) == 2  # a .pt2 is int8 only
    assert "add --int8" in capsys.readouterr().err
    assert main(["test", "--pt2", str(junk), "--onnx", "x.onnx"]) == 2


def test_export_cli_keeps_the_checkpoint_size_for_a_package(monkeypatch, tmp_path):
    """A .pt2 takes one input size: without --image-size it is the checkpoint's, not ONNX's 256."""
    import msrfnet.export.pt2_int8 as int8_cpu
    from msrfnet.cli import main

    calls = []
    monkeypatch.setattr(int8_cpu, "export_int8_pt2", lambda *a, **k: calls.append(k))
    assert main(["export", "--int8", "--out", str(tmp_path / "a.pt2")]) == 0
    assert main(["export", "--int8", "--out", str(tmp_path / "b.pt2"), "--image-size", "64"]) == 0
    assert [k["image_size"] for k in calls] == [None, 64]


def test_a_package_for_missing_cpu_features_is_refused(monkeypatch):
    from msrfnet.accel.pt2_runner import _missing_isa

    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    assert _missing_isa("AVX512 AVX512_VNNI") == ["AVX512_VNNI"]
    assert _missing_isa("AVX512") == [] and _missing_isa("ASIMD") == []


def test_export_refuses_a_package_that_disagrees_with_its_graph(weights, tmp_path, monkeypatch):
    """The failure that motivated the check: a package compiled for a channels-last example reads
    contiguous inputs as if they were channels-last (AOTInductor checks no strides)."""
    import msrfnet.export.pt2_int8 as int8_cpu

    compile_package = int8_cpu.compile_package

    def channels_last_example(quantized, example, path, metadata=None):
        compile_package(
            quantized,
            tuple(t.contiguous(memory_format=torch.channels_last) for t in example),
            path,
            metadata,
        )

    monkeypatch.setattr(int8_cpu, "compile_package", channels_last_example)
    out = tmp_path / "bad.pt2"
    with pytest.raises(int8_cpu.MSRFError, match="disagrees with its quantized graph"):
        int8_cpu.export_int8_pt2(weights, out, calibration=sample_root() / "train" / "images", n=3)
    assert not out.exists() and not list(tmp_path.iterdir())
