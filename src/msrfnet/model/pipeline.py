"""MSRF-Net with its input preprocessing inside: one input, the image, as exported models take it.

The network's second input, the Canny map of the resized uint8 RGB image (spec §2.2), is computed
in the graph by :func:`~msrfnet.model.canny.canny`, which equals ``cv2.Canny``; the [0, 1] scaling
too. So a consumer in C#, Java or a web page feeds pixels and gets probabilities, with no OpenCV
step to rebuild.

Contract of :class:`ImageToProbability`: ``image`` is N×3×H×W RGB with uint8 values (a uint8
tensor, or float holding integers 0–255), H and W multiples of 8, already at the model's size
(the checkpoint's ``image_size``: the paper resizes every image to 256² with Lanczos); the output
is the final head's sigmoid probability, N×1×H×W float32.
"""

from __future__ import annotations

import torch
from torch import nn

from msrfnet.model.canny import canny
from msrfnet.model.msrfnet import scale_pixels

__all__ = ["ImageToProbability", "EXPORT_HYSTERESIS_ITERATIONS"]

#: Hysteresis steps in a traced graph, where the loop cannot stop when it converges: on all 670
#: kdsb images at 256², 128 steps left 2 images with differing pixels (docs/ARCHITECTURE.md).
EXPORT_HYSTERESIS_ITERATIONS = 256


class ImageToProbability(nn.Module):
    """``forward(image)`` → probability N×1×H×W; see the module docstring.

    ``hysteresis_iterations``: None runs the Canny hysteresis until it converges (exact, eager
    mode); an integer fixes the number of steps (what a traced export needs).
    """

    def __init__(
        self,
        net: nn.Module,
        canny_low: float = 10,
        canny_high: float = 1000,
        hysteresis_iterations: int | None = None,
    ):
        super().__init__()
        self.net = net
        self.canny_low, self.canny_high = float(canny_low), float(canny_high)
        self.hysteresis_iterations = hysteresis_iterations

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.to(torch.float32)
        edges = canny(
            pixels, self.canny_low, self.canny_high, iterations=self.hysteresis_iterations
        )
        logits = self.net(scale_pixels(pixels), edges).final
        return torch.sigmoid(logits.float())
