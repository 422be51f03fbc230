"""MSRFNet structure, shapes, gradients and modes (small inputs: 64² or less)."""

from __future__ import annotations

import json

import pytest
import torch
from _shared import require_fixture

import msrfnet
from msrfnet.model import MSRFNet, predict_proba
from msrfnet.model.keras import keras_layer_table, torch_module_name


def n_trainable(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def n_bn_stats(m: torch.nn.Module) -> int:
    return sum(
        b.numel() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var"))
    )


def test_official_parameter_counts():
    m = MSRFNet()
    assert n_trainable(m) == 24_594_365
    assert n_bn_stats(m) == 3_210


def test_per_block_counts_match_the_keras_manifest():
    """Per block (encoder stage, each DSDF block, shape stream, decoders, heads): manifest.json."""
    manifest = json.loads((require_fixture("fixtures/keras_reference/manifest.json")).read_text())
    m = MSRFNet()
    modules = dict(m.named_modules())
    counted: dict[str, list[int]] = {}
    for row in keras_layer_table():
        mod = modules[torch_module_name(row["block"], row["role"])]
        c = counted.setdefault(row["block"], [0, 0])
        c[0] += sum(p.numel() for p in mod.parameters(recurse=False))
        c[1] += n_bn_stats(mod)
    for block, want in manifest["per_block"].items():
        assert counted[block] == [want["trainable"], want["non_trainable"]], block
    # every parameter of the model is reached by exactly one Keras layer
    assert sum(c[0] for c in counted.values()) == n_trainable(m)


def test_dsdf_block_counts_follow_the_spec_formula():
    # 9·Σ(c_in·c_out) + biases; the three scale pairs of spec §1.3
    counts = [n_trainable(b) for b in MSRFNet().msrf.blocks]
    assert counts == [
        286_032,
        4_572_480,
        286_032,
        4_572_480,
        1_143_456,
        286_032,
        4_572_480,
        1_143_456,
        286_032,
        4_572_480,
    ]


def test_clean_variant_parameter_count():
    m = MSRFNet(variant="clean")
    assert n_trainable(m) == 20_392_253
    assert n_bn_stats(m) == 3_210
    assert n_trainable(m.encoder) == n_trainable(MSRFNet().encoder)


def test_train_and_eval_differ_and_eval_is_deterministic():
    torch.manual_seed(0)
    m = MSRFNet()
    x, canny = torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    m.eval()
    with torch.no_grad():
        a, b = m(x, canny).final, m(x, canny).final
    assert torch.equal(a, b)
    m.train()
    with torch.no_grad():
        c = m(x, canny).final  # dropout on, batch statistics in BN
    assert not torch.allclose(a, c)
    # predict_proba: probabilities in eval mode, and the mode is restored
    p = predict_proba(m, x, canny)  # (the train-mode pass above moved the BN statistics)
    assert m.training
    m.eval()
    with torch.no_grad():
        assert torch.allclose(p, torch.sigmoid(m(x, canny).final))
    assert ((p >= 0) & (p <= 1)).all()


def test_training_updates_bn_statistics_with_keras_momentum():
    m = MSRFNet()
    bn = m.encoder.e1.bn
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)
    assert m.d2.attention.bn.eps == 1e-5
    before = bn.running_mean.clone()
    m.train()
    m(torch.rand(2, 3, 16, 16), torch.zeros(2, 1, 16, 16))
    assert not torch.equal(before, bn.running_mean)


@pytest.mark.parametrize(
    "size,hint", [((60, 64), "height 60 → 56 or 64"), ((64, 100), "width 100 → 96 or 104")]
)
def test_size_not_multiple_of_8_is_a_clear_error(size, hint):
    m = MSRFNet()
    with pytest.raises(ValueError, match=hint):
        m(torch.rand(1, 3, *size), torch.zeros(1, 1, *size))


def test_bad_variant():
    with pytest.raises(ValueError, match="variant"):
        MSRFNet(variant="paper")


def test_public_api_is_lazy_and_complete():
    assert msrfnet.MSRFNet is MSRFNet
    assert callable(msrfnet.from_keras) and callable(msrfnet.predict_proba)
    with pytest.raises(AttributeError):
        msrfnet.does_not_exist  # noqa: B018


def test_keras_initialisers():
    torch.manual_seed(0)
    m = MSRFNet()
    conv = m.encoder.e2.conv2  # he_normal (truncated), fan_in = 9·64
    std = (2 / (9 * 64)) ** 0.5
    w = conv.weight
    assert w.abs().max() <= 2 * std / 0.8796 + 1e-6
    assert abs(w.std().item() - std) / std < 0.05
    assert torch.count_nonzero(conv.bias) == 0
    psi = m.d2.attention.psi.weight  # RandomNormal(0, 0.02)
    assert abs(psi.std().item() - 0.02) < 0.006
    dense = m.msrf.blocks[1].high[4]  # glorot uniform, fan_in 9·448, fan_out 9·128
    limit = (6 / (9 * 448 + 9 * 128)) ** 0.5
    assert dense.weight.abs().max() <= limit
    assert dense.weight.abs().max() > 0.95 * limit
