"""Hand-computed cases for each Keras-equivalent operation (spec §1.8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msrfnet.model.layers import (
    LegacyUpsample,
    SameConv2d,
    SameConvTranspose2d,
    SqueezeExcite,
    keras_bn,
    legacy_bilinear_upsample,
)


def _ones_conv(m, value=1.0):
    with torch.no_grad():
        m.weight.fill_(value)
        if m.bias is not None:
            m.bias.zero_()
    return m


def test_same_conv_stride2_pads_bottom_right_only():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    conv = _ones_conv(SameConv2d(1, 1, 3, stride=2))
    y = conv(x)[0, 0]
    # TF 'same': windows start at rows/cols 0 and 2; the 3rd row/col of the second window is padding
    want = torch.tensor(
        [
            [x[0, 0, 0:3, 0:3].sum(), x[0, 0, 0:3, 2:4].sum()],
            [x[0, 0, 2:4, 0:3].sum(), x[0, 0, 2:4, 2:4].sum()],
        ]
    )
    assert torch.equal(y, want)
    naive = F.conv2d(x, conv.weight, padding=1, stride=2)[0, 0]  # the common wrong port
    assert not torch.equal(naive, want)


def test_same_conv_stride1_and_k2_stride2():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = _ones_conv(SameConv2d(1, 1, 3))(x)
    assert y.shape == x.shape and y[0, 0, 0, 0] == x[0, 0, :2, :2].sum()
    y = _ones_conv(SameConv2d(1, 1, 2, stride=2))(x)  # no padding at all: 2×2 blocks
    assert torch.equal(y[0, 0], torch.tensor([[10.0, 18.0], [42.0, 50.0]]))


def test_transposed_k3_s2_crops_the_last_row_and_column():
    t = SameConvTranspose2d(1, 1, 3)
    with torch.no_grad():
        t.weight.copy_(torch.arange(9.0).reshape(1, 1, 3, 3))
        t.bias.zero_()
    y = t(torch.ones(1, 1, 1, 1))
    # full output is the 3×3 kernel; Keras keeps the top-left 2×2
    assert torch.equal(y[0, 0], torch.tensor([[0.0, 1.0], [3.0, 4.0]]))
    y = t(torch.ones(1, 1, 3, 5))
    assert y.shape[-2:] == (6, 10)


def test_transposed_k1_s2_puts_data_at_even_positions_bias_elsewhere():
    t = SameConvTranspose2d(1, 1, 1)
    with torch.no_grad():
        t.weight.fill_(1.0)
        t.bias.fill_(0.5)
    y = t(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))[0, 0]
    want = torch.full((4, 4), 0.5)
    want[0::2, 0::2] += torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(y, want)


def test_transposed_k4_s2_is_padding_1():
    t = SameConvTranspose2d(2, 3, 4)
    x = torch.randn(1, 2, 5, 7)
    assert torch.allclose(t(x), F.conv_transpose2d(x, t.weight, t.bias, stride=2, padding=1))
    assert t(x).shape[-2:] == (10, 14)


def _legacy_reference(x: torch.Tensor, f: int) -> torch.Tensor:
    """TF1 resize_bilinear written out: src = dst / f, floor, clamp at the border."""
    h, w = x.shape[-2:]
    out = torch.empty(*x.shape[:-2], h * f, w * f, dtype=torch.float64)
    xd = x.double()
    for i in range(h * f):
        sy = i / f
        y0 = int(sy)
        y1, wy = min(y0 + 1, h - 1), sy - y0
        for j in range(w * f):
            sx = j / f
            x0 = int(sx)
            x1, wx = min(x0 + 1, w - 1), sx - x0
            top = xd[..., y0, x0] * (1 - wx) + xd[..., y0, x1] * wx
            bot = xd[..., y1, x0] * (1 - wx) + xd[..., y1, x1] * wx
            out[..., i, j] = top * (1 - wy) + bot * wy
    return out


def test_legacy_bilinear_hand_case():
    x = torch.tensor([[[[0.0, 1.0]]]])
    y = legacy_bilinear_upsample(x, 2)
    # columns: src 0, 0.5, 1, 1.5 → 0, 0.5, 1, 1 (clamped); rows replicate the single row
    assert torch.allclose(y, torch.tensor([[[[0.0, 0.5, 1.0, 1.0], [0.0, 0.5, 1.0, 1.0]]]]))
    half_pixel = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert not torch.allclose(y, half_pixel)


def test_legacy_bilinear_matches_the_tf1_rule():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4)
    for f in (2, 4, 8):
        got = LegacyUpsample(f)(x)
        assert torch.allclose(got.double(), _legacy_reference(x, f), atol=1e-6)


def test_keras_bn_and_se():
    bn = keras_bn(4)
    assert bn.eps == 1e-3 and abs(bn.momentum - 0.01) < 1e-12
    se = SqueezeExcite(32)
    assert se.fc1.out_features == 2 and se.fc2.out_features == 32
    x = torch.randn(2, 32, 4, 4)
    s = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3))))))
    assert torch.allclose(se(x), x * s[:, :, None, None])
