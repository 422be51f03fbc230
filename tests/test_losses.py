"""The original loss (spec §2.1) against the Keras reference fixture, and its numerical safety."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _shared import require_fixture

from msrfnet.losses import LOSS_TERMS, ORIGINAL_WEIGHTS, MSRFLoss, bce_clipped, soft_dice_loss
from msrfnet.model.outputs import MSRFOutput

REL = 1e-5  # the fixture README's suggested tolerance for losses


@pytest.fixture(scope="module")
def keras_case():
    with np.load(require_fixture(), allow_pickle=False) as z:

        def nchw(key: str) -> torch.Tensor:
            return torch.from_numpy(z[key]).permute(0, 3, 1, 2).contiguous()

        out = MSRFOutput(
            final=nchw("mid/logit_x"),
            edge=nchw("mid/edge_logit"),
            aux2=nchw("mid/logit_pred2_head"),
            aux4=nchw("mid/logit_pred4_head"),
        )
        ref = {k: float(z[f"loss/{k}"]) for k in (*LOSS_TERMS, "total")}
        return out, nchw("target/mask"), nchw("target/edge"), ref


def random_case(b=2, k=1, h=32, w=32, scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = MSRFOutput(
        final=scale * torch.randn(b, k, h, w, generator=g),
        edge=scale * torch.randn(b, 1, h, w, generator=g),
        aux2=scale * torch.randn(b, k, h // 2, w // 2, generator=g),
        aux4=scale * torch.randn(b, k, h // 4, w // 4, generator=g),
    )
    out = MSRFOutput(*(t.to(dtype) for t in out))
    mask = (torch.rand(b, k, h, w, generator=g) > 0.7).float()
    edge = (torch.rand(b, 1, h, w, generator=g) > 0.9).float()
    return out, mask, edge


# --- the fixture ------------------------------------------------------------------------------


def test_terms_match_keras(keras_case):
    out, mask, edge, ref = keras_case
    total, terms = MSRFLoss()(out, mask, edge)
    assert set(terms) == set(LOSS_TERMS)
    for k in LOSS_TERMS:
        assert terms[k].item() == pytest.approx(ref[k], rel=REL), k
    assert total.item() == pytest.approx(ref["total"], rel=REL)


def test_targets_are_binary_and_edge_nonempty(keras_case):
    # guards the comparison above: an empty target would leave the Dice terms untested
    _, mask, edge, _ = keras_case
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert edge.sum() > 0


def test_total_is_weighted_sum_of_terms(keras_case):
    out, mask, edge, _ = keras_case
    total, terms = MSRFLoss()(out, mask, edge)
    expected = sum(ORIGINAL_WEIGHTS[k] * terms[k] for k in LOSS_TERMS)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


# --- the building blocks ----------------------------------------------------------------------


def test_soft_dice_is_batch_level_not_per_image():
    # image 0 is perfect and large, image 1 misses a single pixel entirely
    p = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    p[0, 0, :2] = 1.0
    y[0, 0, :2] = 1.0
    y[1, 0, 0, 0] = 1.0
    # Σpy = 8, Σp = 8, Σy = 9 → 1 − 17/18
    assert soft_dice_loss(p, y).item() == pytest.approx(1 - 17 / 18, rel=1e-6)
    assert soft_dice_loss(p, y, smooth=0.0).item() == pytest.approx(1 - 16 / 17, rel=1e-6)


def test_soft_dice_empty_pair_is_zero_loss():
    z = torch.zeros(2, 1, 4, 4)
    assert soft_dice_loss(z, z).item() == 0.0


def test_soft_dice_averages_channels():
    p = torch.zeros(1, 2, 2, 2)
    y = torch.zeros(1, 2, 2, 2)
    p[0, 0] = 1.0
    y[0, 0] = 1.0  # channel 0 perfect → 0
    y[0, 1, 0, 0] = 1.0  # channel 1 all missed → 1 − 1/2
    assert soft_dice_loss(p, y).item() == pytest.approx(0.25, rel=1e-6)


def test_bce_clipped_formula_and_bound():
    p = torch.tensor([0.0, 1.0, 0.3, 0.9])
    t = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # float32 arithmetic as TF does it: 1 − (1 − 1e-7) is 1.19e-7 in float32, not 1e-7
    eps = np.float32(1e-7)
    pc = np.clip(p.numpy(), eps, np.float32(1) - eps)
    tn = t.numpy()
    expected = -np.mean(tn * np.log(pc + eps) + (1 - tn) * np.log(np.float32(1) - pc + eps))
    assert bce_clipped(p, t).item() == pytest.approx(float(expected), rel=1e-6)
    # the worst pixel is bounded (≈ −log 2e-7 ≈ 15.4), not infinite
    worst = bce_clipped(torch.zeros(1), torch.ones(1)).item()
    assert worst == pytest.approx(-math.log(2e-7), rel=1e-5)


def test_shape_errors_name_expected_shape():
    out, mask, edge = random_case()
    with pytest.raises(ValueError, match="mask"):
        MSRFLoss()(out, mask[:, :, :16], edge)
    with pytest.raises(ValueError, match="edge"):
        MSRFLoss()(out, mask, edge[:1])
    bad = out._replace(aux2=out.aux4)
    with pytest.raises(ValueError, match="pred2"):
        MSRFLoss()(bad, mask, edge)


# --- training behaviour -----------------------------------------------------------------------


def test_gradient_reaches_every_head():
    out, mask, edge = random_case()
    out = MSRFOutput(*(t.clone().requires_grad_(True) for t in out))
    total, terms = MSRFLoss()(out, mask, edge)
    total.backward()
    for name, t in zip(out._fields, out):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name
    assert all(not v.requires_grad for v in terms.values())


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_saturated_logits_give_finite_loss_and_grad(scale):
    out, mask, edge = random_case(scale=scale)
    out = MSRFOutput(*(t.clone().requires_grad_(True) for t in out))
    total, terms = MSRFLoss()(out, mask, edge)
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(t.grad).all() for t in out)
    # the logits path is unbounded (~|logit| per wrong pixel), the clipped path is not
    assert terms["x"] > 10 and terms["pred2"] < 17 + 1


def test_bf16_inputs_give_float32_loss():
    out, mask, edge = random_case(dtype=torch.bfloat16)
    total, terms = MSRFLoss()(out, mask.bfloat16(), edge.bfloat16())
    assert total.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in terms.values())
    ref_total, _ = MSRFLoss()(MSRFOutput(*(t.float() for t in out)), mask, edge)
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-6)


def test_float32_under_bf16_autocast():
    out, mask, edge = random_case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = MSRFLoss()(out, mask, edge)
    ref, _ = MSRFLoss()(out, mask, edge)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)


def test_weights_change_the_total():
    out, mask, edge = random_case()
    base, terms = MSRFLoss()(out, mask, edge)
    custom, _ = MSRFLoss(final_weight=1.0, edge_weight=0.0, aux2_weight=0.5, aux4_weight=0.25)(
        out, mask, edge
    )
    assert custom.item() == pytest.approx(
        (terms["x"] + 0.5 * terms["pred2"] + 0.25 * terms["pred4"]).item(), rel=1e-6
    )
    assert custom.item() != pytest.approx(base.item())


def test_final_term_uses_logits_path():
    # x must equal BCE-with-logits + Dice(sigmoid), not the clipped probability BCE
    out, mask, edge = random_case(scale=30.0)
    _, terms = MSRFLoss()(out, mask, edge)
    expected = F.binary_cross_entropy_with_logits(out.final, mask) + soft_dice_loss(
        torch.sigmoid(out.final), mask
    )
    clipped = bce_clipped(torch.sigmoid(out.final), mask) + soft_dice_loss(
        torch.sigmoid(out.final), mask
    )
    assert terms["x"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["x"].item() != pytest.approx(clipped.item(), rel=1e-3)


# --- the fixture locator (tests/_shared.py) -----------------------------------------------------


def test_missing_fixture_skips_locally_and_fails_in_ci(monkeypatch, tmp_path):
    from _shared import require_fixture as locate

    monkeypatch.setenv("MSRF_SHARED", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        locate()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI"):
        locate()
    (tmp_path / "x.npz").write_bytes(b"")
    assert locate("x.npz") == tmp_path / "x.npz"
