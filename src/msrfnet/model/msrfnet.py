"""MSRF-Net: A Multi-Scale Residual Fusion Network for Biomedical Image Segmentation.

A. Srivastava, D. Jha, S. Chanda, U. Pal, H. D. Johansen, D. Johansen, M. A. Riegler, S. Ali,
P. Halvorsen. IEEE JBHI 2022, doi:10.1109/JBHI.2021.3138024, arXiv:2105.07451.

``variant="official"`` computes the same function as the authors' Keras model (``model.py`` at
``60e2373`` with its NameError line removed and DSDF blocks 9/10 chained as in the paper figure):
24,594,365 trainable parameters, proven block by block against the Keras reference fixture
(``tests/model/test_fixture_equivalence.py``). ``variant="clean"`` wires the DSDF blocks as Fig. 2a
draws them. ``docs/ARCHITECTURE.md`` lists every departure of the official code from the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from msrfnet.config import VARIANTS
from msrfnet.model.decoder import DecoderBlock, FinalDecoder
from msrfnet.model.dsdf import MSRFSubnetwork
from msrfnet.model.encoder import ENCODER_CHANNELS, Encoder
from msrfnet.model.layers import capturing, keras_init_
from msrfnet.model.outputs import MSRFOutput
from msrfnet.model.pretrained import PretrainedMixin
from msrfnet.model.shape_stream import ShapeStream
from msrfnet.model.upsampling import UPSAMPLING
from msrfnet.options import check, check_input_size, choice

__all__ = ["MSRFNet", "predict_proba", "scale_pixels", "VARIANTS", "UPSAMPLING"]


class MSRFNet(PretrainedMixin, nn.Module):
    """MSRF-Net. ``forward(image, canny)`` → :class:`MSRFOutput` of logits, final mask first.

    Args:
        in_channels: image channels (3 for RGB; the original scales RGB to [0, 1], no mean/std).
        num_classes: output channels of the three segmentation heads, each an independent sigmoid
            (1 in the paper). The shape stream always predicts a single boundary map.
        variant: ``"official"`` (the Keras graph, default) or ``"clean"`` (Fig. 2a wiring).
        memory_efficient: the DSDF blocks keep the parts of their dense concatenations, not the
            concatenations, for the backward pass (``model/dense.py``; training memory only).
        upsampling: how the stride-2 up-convolutions are computed: ``"transposed"`` (Keras' form,
            default) or a sub-pixel form (``model/upsampling.py``, :data:`UPSAMPLING`).

    The two options change how the function is computed, not the function (up to float
    rounding) nor the ``state_dict``: a model built with any of them loads the same weights.
    Inputs are ``image`` B×C×H×W in [0, 1] and ``canny`` B×1×H×W in {0, 1} (the Canny map of the
    image, computed by the data pipeline), with H and W multiples of 8.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        variant: str = "official",
        *,
        memory_efficient: bool = True,
        upsampling: str = "transposed",
    ):
        super().__init__()
        check(choice(VARIANTS), variant, "variant")
        check(choice(tuple(UPSAMPLING)), upsampling, "upsampling")
        c1, c2, c3, c4 = ENCODER_CHANNELS
        self.in_channels, self.num_classes, self.variant = in_channels, num_classes, variant
        self.memory_efficient, self.upsampling = memory_efficient, upsampling
        self.encoder = Encoder(in_channels, ENCODER_CHANNELS)
        self.msrf = MSRFSubnetwork(
            ENCODER_CHANNELS, variant, memory_efficient=memory_efficient, upsampling=upsampling
        )
        self.shape_stream = ShapeStream(ENCODER_CHANNELS)
        self.d2 = DecoderBlock(c3, c4, upsampling)  # official decoder A: skip Y3, prev Y4
        self.d3 = DecoderBlock(c2, c3, upsampling)  # official decoder B: skip Y2, prev D2
        self.d4 = FinalDecoder(c1, c2, upsampling)  # official decoder C: Y1, D3, fused edge map
        self.head_final = nn.Conv2d(c1, num_classes, 1)  # ``x``
        self.head_aux2 = nn.Conv2d(c2, num_classes, 1)  # ``pred2``, on D3
        self.head_aux4 = nn.Conv2d(c3, num_classes, 1)  # ``pred4``, on D2
        keras_init_(self)

    @staticmethod
    def check_size(height: int, width: int) -> None:
        """Raise :class:`~msrfnet.errors.MSRFError` (a ``ValueError``) naming the nearest valid
        sizes unless both are multiples of 8 (the one rule, :mod:`msrfnet.options`)."""
        check_input_size(height, width)

    def rebuild(self, **options) -> "MSRFNet":
        """A new model of this architecture built with other ``options`` (``memory_efficient``,
        ``upsampling``; the others kept) holding this model's weights, on its device, in its
        dtype and train/eval mode. How the inference and export copies are made."""
        kept = {"memory_efficient": self.memory_efficient, "upsampling": self.upsampling}
        net = type(self)(self.in_channels, self.num_classes, self.variant, **{**kept, **options})
        p = next(self.parameters())
        net = net.to(device=p.device, dtype=p.dtype)
        net.load_state_dict(self.state_dict())
        if hasattr(self, "msrf_config"):
            net.msrf_config = self.msrf_config
        return net.train(self.training)

    def forward(self, image: torch.Tensor, canny: torch.Tensor) -> MSRFOutput:
        if not capturing():  # shapes are symbolic while a graph is captured (model/layers.py)
            self.check_size(image.shape[-2], image.shape[-1])
        y1, y2, y3, y4 = self.msrf(self.encoder(image))
        edge_logit, edge = self.shape_stream(y2, y3, y4, canny.to(image.dtype))
        d2 = self.d2(y3, y4)
        d3 = self.d3(y2, d2)
        f = self.d4(d3, y1, edge)
        return MSRFOutput(self.head_final(f), edge_logit, self.head_aux2(d3), self.head_aux4(d2))


def scale_pixels(pixels):
    """0–255 pixel values (a uint8 or float tensor or numpy array) as the model's image input:
    float32 ``pixels / 255`` in [0, 1], the original's scaling (no mean/std); the same kind back.
    Every path into the model scales with this."""
    if isinstance(pixels, np.ndarray):
        return pixels.astype(np.float32) / np.float32(255)
    return pixels.to(torch.float32) / 255


@torch.no_grad()
def predict_proba(model: MSRFNet, image: torch.Tensor, canny: torch.Tensor) -> torch.Tensor:
    """Probability of the final mask, in inference mode (the model's train/eval state is kept)."""
    was_training = model.training
    model.eval()
    try:
        return torch.sigmoid(model(image, canny).final)
    finally:
        model.train(was_training)
