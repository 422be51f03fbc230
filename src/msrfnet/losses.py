"""The original MSRF-Net training loss, term by term.

Spec: ``msrf-net-original.md`` §2.1 (``train.py`` + ``loss.py``) and the fixture README's section
"Loss", which says how TF 2.2 / Keras 2.3.1 actually executes each term::

    L      = 2·L_seg(x) + 1·BCE(edge_out) + 1·L_seg(pred2) + 1·L_seg(pred4)
    L_seg  = BCE(p, y) + [1 − (2·Σ p·y + 1) / (Σ p + Σ y + 1)]

- The soft Dice sums run over the **whole batch** (every image, every pixel) with smooth = 1; it
  is not a mean of per-image Dice values.
- ``x`` and ``edge_out`` end in a Sigmoid op, so Keras' ``binary_crossentropy`` takes the
  *logits* path (``sigmoid_cross_entropy_with_logits``): no clipping. We use
  :func:`torch.nn.functional.binary_cross_entropy_with_logits`, which is the same formula.
- ``pred2``/``pred4`` end in a resize (the head's sigmoid probabilities are upsampled), so Keras
  takes the probability path: ``p = clip(p, 1e-7, 1 − 1e-7)`` and
  ``−(t·log(p + 1e-7) + (1 − t)·log(1 − p + 1e-7))`` (:func:`bce_clipped`).
- The Dice terms use the unclipped probabilities: ``sigmoid(final)`` for ``x`` and the upsampled
  probabilities for ``pred2``/``pred4``.
- The BCE of ``edge_out`` has no Dice term.

The two BCE paths only differ where outputs saturate; matching them is what lets
``tests/test_losses.py`` reproduce the Keras losses of the reference fixture to ~1e-7 relative.

Everything is computed in float32 with autocast disabled, so a bf16/fp16 forward still gets a
float32 loss (the log/sigmoid terms and the batch-wide sums lose too much in 16 bits).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from msrfnet.model.layers import legacy_bilinear_upsample
from msrfnet.model.outputs import MSRFOutput

__all__ = [
    "KERAS_EPSILON",
    "LOSS_TERMS",
    "ORIGINAL_WEIGHTS",
    "MSRFLoss",
    "bce_clipped",
    "soft_dice_loss",
]

#: Keras' ``backend.epsilon()``: both the clip bound and the offset inside the logs.
KERAS_EPSILON = 1e-7

#: Names of the four loss terms, as Keras reports them (``x_loss`` → ``"x"`` …) and as the
#: fixture stores them (``loss/x`` …). They map onto :class:`MSRFOutput` fields
#: final → x, edge → edge_out, aux2 → pred2, aux4 → pred4.
LOSS_TERMS = ("x", "edge_out", "pred2", "pred4")

#: ``loss_weights`` of the original ``train.py`` compile (spec §2.1, §5.2 item 9).
ORIGINAL_WEIGHTS = {"x": 2.0, "edge_out": 1.0, "pred2": 1.0, "pred4": 1.0}

# upsampling factor of each auxiliary head in the original graph (pred2 after D3, pred4 after D2)
_AUX_FACTORS = {"pred2": 2, "pred4": 4}


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Batch-level soft Dice loss of the original ``loss.py``: ``1 − (2Σpy + s)/(Σp + Σy + s)``.

    ``prob`` and ``target`` are B×K×H×W (any number of trailing spatial axes). The sums run over
    the batch and all spatial axes at once, as the original's ``K.flatten`` over the whole batch
    does, so an image with a small object weighs less than in a per-image Dice. For K > 1 the
    loss is computed per channel and averaged (the original has K = 1, where this is exactly the
    formula above); pooling classes into one sum would let a large class hide a small one.
    """
    if prob.shape != target.shape:
        raise ValueError(
            "soft_dice_loss: prob and target must have the same shape, "
            f"got {tuple(prob.shape)} and {tuple(target.shape)}"
        )
    if prob.ndim < 3:
        raise ValueError(
            f"soft_dice_loss: expected B×K×H×W (at least 3 axes), got shape {tuple(prob.shape)}"
        )
    dims = (0, *range(2, prob.ndim))
    intersection = (prob * target).sum(dims)
    denominator = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


def bce_clipped(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Keras' ``binary_crossentropy`` on probabilities (the path TF 2.2 takes after a resize).

    ``p = clip(prob, 1e-7, 1 − 1e-7)``, then the pixel mean of
    ``−(t·log(p + 1e-7) + (1 − t)·log(1 − p + 1e-7))``. The clip bounds the loss at ~16.1 per
    pixel, and, as ``tf.clip_by_value``, passes no gradient to saturated pixels. The operations
    keep TF's order (``1 − p`` then ``+ eps``) so float32 rounding matches as well.
    """
    if prob.shape != target.shape:
        raise ValueError(
            f"bce_clipped: prob and target must have the same shape, got {tuple(prob.shape)} and "
            f"{tuple(target.shape)}"
        )
    eps = KERAS_EPSILON
    p = prob.clamp(eps, 1.0 - eps)
    loss = -(target * torch.log(p + eps) + (1.0 - target) * torch.log(1.0 - p + eps))
    return loss.mean()


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    # autocast would re-run sigmoid/interpolate in bf16 even on float32 inputs; only the device
    # types that have an autocast mode accept the context manager
    if device.type in ("cpu", "cuda", "mps", "xpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class MSRFLoss(nn.Module):
    """The original deep-supervised loss, ``2·L_seg(x) + BCE(edge) + L_seg(pred2) + L_seg(pred4)``.

    Args:
        final_weight: weight of the final mask ``x`` (original: 2).
        edge_weight: weight of the shape-stream boundary ``edge_out`` (original: 1).
        aux2_weight: weight of the deep-supervision head ``pred2`` (original: 1).
        aux4_weight: weight of the deep-supervision head ``pred4`` (original: 1).
        smooth: the soft-Dice smoothing constant (original: 1).

    ``forward(out, mask, edge)`` takes the model's :class:`MSRFOutput` of logits, the binary mask
    B×K×H×W and the edge target B×1×H×W (both float {0, 1}; bool also works), and returns
    ``(total, terms)``: the weighted float32 sum to back-propagate, and a dict of the *unweighted*
    per-output losses ``{"x", "edge_out", "pred2", "pred4"}``, detached, for logging. Both targets
    are full resolution: the auxiliary heads are upsampled to them, as in the original.
    """

    def __init__(
        self,
        *,
        final_weight: float = ORIGINAL_WEIGHTS["x"],
        edge_weight: float = ORIGINAL_WEIGHTS["edge_out"],
        aux2_weight: float = ORIGINAL_WEIGHTS["pred2"],
        aux4_weight: float = ORIGINAL_WEIGHTS["pred4"],
        smooth: float = 1.0,
    ):
        super().__init__()
        self.weights = {
            "x": float(final_weight),
            "edge_out": float(edge_weight),
            "pred2": float(aux2_weight),
            "pred4": float(aux4_weight),
        }
        self.smooth = float(smooth)

    def forward(
        self,
        out: MSRFOutput,
        mask: torch.Tensor,
        edge: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check_shapes(out, mask, edge)
        with _autocast_off(out.final.device):
            mask = mask.float()
            edge = edge.float()
            terms = {
                "x": self._seg_from_logits(out.final.float(), mask),
                "edge_out": F.binary_cross_entropy_with_logits(out.edge.float(), edge),
                "pred2": self._seg_from_probs(self._upsampled(out.aux2, "pred2"), mask),
                "pred4": self._seg_from_probs(self._upsampled(out.aux4, "pred4"), mask),
            }
            total = sum(self.weights[k] * v for k, v in terms.items())
        return total, {k: v.detach() for k, v in terms.items()}

    def _seg_from_logits(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, mask)
        return bce + soft_dice_loss(torch.sigmoid(logits), mask, self.smooth)

    def _seg_from_probs(self, prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return bce_clipped(prob, mask) + soft_dice_loss(prob, mask, self.smooth)

    @staticmethod
    def _upsampled(logits: torch.Tensor, name: str) -> torch.Tensor:
        # the original upsamples the head's sigmoid output, not its logits (spec §1.7)
        return legacy_bilinear_upsample(torch.sigmoid(logits.float()), _AUX_FACTORS[name])

    @staticmethod
    def _check_shapes(out: MSRFOutput, mask: torch.Tensor, edge: torch.Tensor) -> None:
        # shape checks only: they cost no device synchronisation
        b, k, h, w = out.final.shape
        if tuple(mask.shape) != (b, k, h, w):
            raise ValueError(
                f"MSRFLoss: mask must match the final output's shape {(b, k, h, w)}, got "
                f"{tuple(mask.shape)}"
            )
        if tuple(edge.shape) != tuple(out.edge.shape) or edge.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                "MSRFLoss: edge target must be B×1×H×W like the edge output "
                f"{tuple(out.edge.shape)}, got {tuple(edge.shape)}"
            )
        for name, aux in (("pred2", out.aux2), ("pred4", out.aux4)):
            f = _AUX_FACTORS[name]
            if tuple(aux.shape) != (b, k, h // f, w // f) or h % f or w % f:
                raise ValueError(
                    f"MSRFLoss: {name} logits must be {(b, k, h // f, w // f)} (1/{f} of the mask "
                    f"{(h, w)}), got {tuple(aux.shape)}"
                )

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return f"weights=({w}), smooth={self.smooth:g}"
