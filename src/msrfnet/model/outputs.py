"""The named structure every MSRF-Net forward returns."""

from __future__ import annotations

from typing import NamedTuple

import torch

from msrfnet.model.layers import legacy_bilinear_upsample

__all__ = ["MSRFOutput"]


class MSRFOutput(NamedTuple):
    """Logits of the four heads of MSRF-Net; the final mask comes first.

    ``final``  — the segmentation mask ``x`` (decoder D4 head), B×K×H×W.
    ``edge``   — the shape-stream boundary map ``edge_out``, B×1×H×W.
    ``aux2``   — deep-supervision head ``pred2`` after D3, at its own resolution B×K×H/2×W/2.
    ``aux4``   — deep-supervision head ``pred4`` after D2, at its own resolution B×K×H/4×W/4.

    The original upsamples the auxiliary heads' *sigmoid probabilities* (Keras 2.3.1 bilinear), not
    their logits, so the low-resolution logits are returned and :meth:`aux_probabilities` does the
    upsampling where a full-resolution map is needed (the loss, a figure).
    """

    final: torch.Tensor
    edge: torch.Tensor
    aux2: torch.Tensor
    aux4: torch.Tensor

    def aux_probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``pred2`` and ``pred4`` as the original computes them: bilinear(sigmoid(logit))."""
        return (
            legacy_bilinear_upsample(torch.sigmoid(self.aux2), 2),
            legacy_bilinear_upsample(torch.sigmoid(self.aux4), 4),
        )
