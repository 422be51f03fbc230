"""Canny edge maps in PyTorch, the same algorithm as ``cv2.Canny(image, low, high)``.

MSRF-Net's second input is the Canny map of the resized uint8 RGB image (spec §2.2). Computing it
inside the graph lets an exported model take the image alone. The steps follow OpenCV's defaults
(3×3 aperture, L1 gradient):

1. Sobel derivatives per channel with replicated borders; on a multi-channel image each pixel keeps
   the derivatives of the channel with the largest ``|dx| + |dy|`` (the first one on a tie);
2. non-maximum suppression along the gradient direction, sorted into horizontal, vertical and the
   two diagonals with OpenCV's fixed-point tangent of 22.5° (``round(tan 22.5° · 2¹⁵)``), the
   magnitude outside the image being 0; a pixel survives when its magnitude is above ``low`` and a
   local maximum (strictly above the neighbour before it, at least the one after it, strictly above
   both on a diagonal, as OpenCV compares);
3. hysteresis: survivors above ``high`` seed edges that grow through 8-connected survivors.

Thresholds are floored to integers, and swapped when ``low > high``, as OpenCV does. Step 3 is a
geodesic dilation repeated until nothing changes (``iterations=None``) or a fixed number of times
(for graph export, where a data-dependent loop cannot be traced): a bounded run misses only the
pixels of an edge farther than that many steps from every seed of the edge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["canny", "hysteresis"]

_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _SHIFT) + 0.5)  # tan 22.5° in Q15


def _shifted(padded: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The H×W window of a 1-pixel-padded tensor shifted by (dy, dx); slices with constant
    bounds, so that a traced graph keeps height and width symbolic."""
    rows = {-1: slice(None, -2), 0: slice(1, -1), 1: slice(2, None)}
    return padded[..., rows[dy], rows[dx]]


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3×3 Sobel derivatives of an N×C×H×W float tensor, replicated border, per channel."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = sum(w * (_shifted(p, r, 1) - _shifted(p, r, -1)) for r, w in ((-1, 1), (0, 2), (1, 1)))
    dy = sum(w * (_shifted(p, 1, c) - _shifted(p, -1, c)) for c, w in ((-1, 1), (0, 2), (1, 1)))
    return dx, dy


def _strongest_channel(dx, dy, mag):
    """Per pixel, the derivatives and magnitude of the channel with the largest magnitude."""
    if mag.shape[1] == 1:
        return dx, dy, mag
    idx = mag.argmax(dim=1, keepdim=True)  # the first maximum, as OpenCV's strict '>' scan
    return dx.gather(1, idx), dy.gather(1, idx), mag.gather(1, idx)


def _non_max_suppression(dx, dy, mag, low: int) -> torch.Tensor:
    """OpenCV's non-maximum suppression on integer-valued N×1×H×W tensors → bool survivors."""
    p = F.pad(mag, (1, 1, 1, 1))  # magnitude 0 outside the image

    def at(dy_: int, dx_: int) -> torch.Tensor:
        return _shifted(p, dy_, dx_)

    ax = dx.abs().to(torch.int32)
    ay = dy.abs().to(torch.int32) << _SHIFT  # exact: |d| ≤ 1020, so < 2³¹
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_SHIFT + 1))
    horizontal = ay < tg22x
    vertical = ay > tg67x
    same_sign = (dx < 0) == (dy < 0)  # OpenCV: (xs ^ ys) >= 0
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d = (same_sign & (mag > at(-1, -1)) & (mag > at(1, 1))) | (
        ~same_sign & (mag > at(-1, 1)) & (mag > at(1, -1))
    )
    diagonal = ~(horizontal | vertical)
    # boolean algebra, not torch.where: onnxruntime's CPU Where takes no bool tensors
    keep = (horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d)
    return keep & (mag > low)


def hysteresis(
    strong: torch.Tensor, candidates: torch.Tensor, iterations: int | None = None
) -> torch.Tensor:
    """Grow ``strong`` through 8-connected ``candidates`` (bool N×1×H×W); see the module doc."""
    edges = strong & candidates
    cand = candidates.to(torch.float32)
    grown = edges.to(torch.float32)
    if iterations is not None:
        for _ in range(iterations):
            grown = F.max_pool2d(grown, 3, stride=1, padding=1) * cand
        return grown > 0
    while True:  # until a fixed point; checked every 8 steps (each check syncs a GPU)
        before = grown
        for _ in range(8):
            grown = F.max_pool2d(grown, 3, stride=1, padding=1) * cand
        if torch.equal(before, grown):
            return grown > 0


def canny(
    images: torch.Tensor, low: float, high: float, *, iterations: int | None = None
) -> torch.Tensor:
    """Canny edges of uint8-valued N×C×H×W images (uint8, or float in [0, 255]) → N×1×H×W {0, 1}
    float32, equal to ``cv2.Canny`` of each H×W×C image with (``low``, ``high``), divided by 255.

    ``iterations`` bounds the hysteresis (None: until it converges, the exact result).
    """
    if images.dim() != 4:
        raise ValueError(f"canny: expected N×C×H×W images, got shape {tuple(images.shape)}")
    lo, hi = sorted((math.floor(low), math.floor(high)))
    x = images.to(torch.float32)
    dx, dy = _sobel(x)
    mag = dx.abs() + dy.abs()
    dx, dy, mag = _strongest_channel(dx, dy, mag)
    survivors = _non_max_suppression(dx, dy, mag, lo)
    return hysteresis(survivors & (mag > hi), survivors, iterations).to(torch.float32)
