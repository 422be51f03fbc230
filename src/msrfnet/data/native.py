"""``NativeDataset``: one split at native scale, as ``patch_size`` × ``patch_size`` crops.

``msrf train --patch-size P [--scale S]`` trains on crops of the images as they are (resampled by
S first when given, :func:`msrfnet.data.resample.rescale`, the same resampling tiled prediction
applies), instead of whole images resized to a square (the paper's protocol, :class:`MSRFDataset`):

* **training** — each time an image is drawn, a P × P crop at a uniformly random position;
* **validation** (and test) — the centre P × P crop of each image, the same every epoch, so the
  validation DSC that picks the best epoch is comparable between epochs. It scores only that crop;
  ``msrf test`` afterwards scores whole images with the tiled prediction.

An image (after resampling) smaller than P in a dimension is reflected at its bottom and right up to
P, mask with it, as tiled prediction pads a small image. Files are read at each draw (no cache: the
cache holds resized squares); reading a PNG costs milliseconds, and DataLoader workers overlap it
with training. Items have the layout of :class:`~msrfnet.data.dataset.MSRFDataset`, with the mask
and edge target derived from the crop (the edge target from the 0/255 mask, anti-aliased only
where resampled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from msrfnet.data.augment import Augment
from msrfnet.data.dataset import SampleSource, TrainingSamples
from msrfnet.data.files import display_name
from msrfnet.data.io import foreground_to_grey, read_image, read_mask
from msrfnet.data.layout import split_pairs
from msrfnet.data.resample import rescale
from msrfnet.errors import MSRFError

__all__ = ["reflect_to", "NativeDataset"]


def reflect_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """``array`` (H×W or H×W×C) reflected at its bottom and right up to at least height × width."""
    pad_h, pad_w = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if not (pad_h or pad_w):
        return array
    pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads, mode="reflect")


class NativeDataset(TrainingSamples):
    """The image/mask pairs of ``split`` under ``root`` as P × P crops (module docstring)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        patch_size: int,
        scale: float | None = None,
        random_crop: bool = False,
        mask_threshold: float | None = None,
        canny: tuple[float, float] = (10, 1000),
        edge_canny: tuple[float, float] = (10, 1000),
        augment: Augment | None = None,
        mask_suffix: str = "",
        normalize: str = "minmax",
    ) -> None:
        self.root = Path(root)
        self.normalize = normalize  # 16-bit/float images to 0–255 (msrfnet.data.io.to_uint8)
        self.split = split
        self.size = patch_size
        self.scale = scale
        self.random_crop = random_crop
        self.mask_threshold = mask_threshold
        self.canny = canny
        self.edge_canny = edge_canny
        self.augment = augment
        pairs = split_pairs(self.root, split, mask_suffix)
        self.stems = [p.stem for p in pairs]
        self.image_paths = [p.image for p in pairs]
        self.mask_paths = [p.mask for p in pairs]
        self.image_files = [display_name(p.image, self.root) for p in pairs]
        self.mask_files = [display_name(p.mask, self.root) for p in pairs]
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` whole, at the training scale: (RGB uint8, grey 0–255 uint8 mask)."""
        image = read_image(
            self.image_paths[index], name=self.image_files[index], normalize=self.normalize
        )
        fg = read_mask(
            self.mask_paths[index], mask_threshold=self.mask_threshold, name=self.mask_files[index]
        )
        if fg.shape != image.shape[:2]:
            raise MSRFError(
                f"{self.mask_files[index]}: size {fg.shape[0]}x{fg.shape[1]} differs from its "
                f"image ({image.shape[0]}x{image.shape[1]}, HxW)"
            )
        return rescale(image, self.scale), rescale(foreground_to_grey(fg), self.scale)

    def source(self, index: int) -> SampleSource:
        """The files and original size (H, W) of sample ``index``."""
        from PIL import Image

        with Image.open(self.image_paths[index]) as im:
            width, height = im.size
        return SampleSource(
            stem=self.stems[index],
            image_path=self.image_paths[index],
            mask_path=self.mask_paths[index],
            height=height,
            width=width,
        )

    def _offset(self, free: int) -> int:
        if free <= 0:
            return 0
        if self.random_crop:
            return int(torch.randint(0, free + 1, (1,)).item())
        return free // 2

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, grey = self.load(index)
        p = self.size
        image, grey = reflect_to(image, p, p), reflect_to(grey, p, p)
        y = self._offset(image.shape[0] - p)
        x = self._offset(image.shape[1] - p)
        image = np.ascontiguousarray(image[y : y + p, x : x + p])
        grey = np.ascontiguousarray(grey[y : y + p, x : x + p])
        return self._sample(image, grey, index)
