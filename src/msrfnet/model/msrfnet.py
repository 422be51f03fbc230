"""MSRF-Net: A Multi-Scale Residual Fusion Network for Biomedical Image Segmentation.

A. Srivastava, D. Jha, S. Chanda, U. Pal, H. D. Johansen, D. Johansen, M. A. Riegler, S. Ali,
P. Halvorsen. IEEE JBHI 2022, doi:10.1109/JBHI.2021.3138024, arXiv:2105.07451.

``variant="official"`` computes the same function as the authors' Keras model (``model.py`` at
``60e2373`` with its NameError line removed and DSDF blocks 9/10 chained as in the paper figure):
24,594,365 trainable parameters, proven block by block against the Keras reference fixture
(``tests/test_fixture_equivalence.py``). ``variant="clean"`` wires the DSDF blocks as Fig. 2a draws
them. ``docs/ARCHITECTURE.md`` lists every departure of the official code from the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder import DecoderBlock, FinalDecoder
from .dsdf import MSRFSubnetwork
from .encoder import ENCODER_CHANNELS, Encoder
from .layers import keras_init_
from .outputs import MSRFOutput
from .shape_stream import ShapeStream

VARIANTS = ("official", "clean")


class MSRFNet(nn.Module):
    """MSRF-Net. ``forward(image, canny)`` → :class:`MSRFOutput` of logits, final mask first.

    Args:
        in_channels: image channels (3 for RGB; the original scales RGB to [0, 1], no mean/std).
        num_classes: output channels of the three segmentation heads, each an independent sigmoid
            (1 in the paper). The shape stream always predicts a single boundary map.
        variant: ``"official"`` (the Keras graph, default) or ``"clean"`` (Fig. 2a wiring).

    Inputs are ``image`` B×C×H×W in [0, 1] and ``canny`` B×1×H×W in {0, 1} (the Canny map of the
    image, computed by the data pipeline), with H and W multiples of 8.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, variant: str = "official"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        c1, c2, c3, c4 = ENCODER_CHANNELS
        self.in_channels, self.num_classes, self.variant = in_channels, num_classes, variant
        self.encoder = Encoder(in_channels, ENCODER_CHANNELS)
        self.msrf = MSRFSubnetwork(ENCODER_CHANNELS, variant)
        self.shape_stream = ShapeStream(ENCODER_CHANNELS)
        self.d2 = DecoderBlock(c3, c4)  # official decoder A: skip Y3, prev Y4
        self.d3 = DecoderBlock(c2, c3)  # official decoder B: skip Y2, prev D2
        self.d4 = FinalDecoder(c1, c2)  # official decoder C: Y1, D3 and the fused edge map
        self.head_final = nn.Conv2d(c1, num_classes, 1)  # ``x``
        self.head_aux2 = nn.Conv2d(c2, num_classes, 1)  # ``pred2``, on D3
        self.head_aux4 = nn.Conv2d(c3, num_classes, 1)  # ``pred4``, on D2
        keras_init_(self)

    @classmethod
    def from_pretrained(cls, path: str | None = None, map_location: str | torch.device = "cpu") -> "MSRFNet":
        """The model with the shipped 2018 DSB weights (``msrfnet/weights/msrfnet_kdsb.safetensors``,
        see its model card), in eval mode; ``path`` loads one of our checkpoints instead (a run
        folder, ``.safetensors`` or ``.ckpt``)."""
        from ..checkpoint import load_model
        from ..errors import MSRFError
        from ..weights_resolve import SHIPPED_WEIGHTS

        if path is None:
            if not SHIPPED_WEIGHTS.is_file():
                raise MSRFError(f"{SHIPPED_WEIGHTS}: the shipped weights are not installed; pass a checkpoint path")
            path = SHIPPED_WEIGHTS
        return load_model(path, map_location)[0]

    @staticmethod
    def check_size(height: int, width: int) -> None:
        """Raise ``ValueError`` naming the nearest valid sizes unless both are multiples of 8."""
        bad = [(n, s) for n, s in (("height", height), ("width", width)) if s % 8 or s <= 0]
        if bad:
            hints = ", ".join(f"{n} {s} → {max(8, s // 8 * 8)} or {s // 8 * 8 + 8}" for n, s in bad)
            raise ValueError(f"MSRF-Net needs input height and width that are multiples of 8 (three 2× poolings); got {height}×{width}: {hints}")

    def forward(self, image: torch.Tensor, canny: torch.Tensor) -> MSRFOutput:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_size(image.shape[-2], image.shape[-1])
        y1, y2, y3, y4 = self.msrf(self.encoder(image))
        edge_logit, edge = self.shape_stream(y2, y3, y4, canny.to(image.dtype))
        d2 = self.d2(y3, y4)
        d3 = self.d3(y2, d2)
        f = self.d4(d3, y1, edge)
        return MSRFOutput(self.head_final(f), edge_logit, self.head_aux2(d3), self.head_aux4(d2))


@torch.no_grad()
def predict_proba(model: MSRFNet, image: torch.Tensor, canny: torch.Tensor) -> torch.Tensor:
    """Probability of the final mask, in inference mode (the model's train/eval state is kept)."""
    was_training = model.training
    model.eval()
    try:
        return torch.sigmoid(model(image, canny).final)
    finally:
        model.train(was_training)
