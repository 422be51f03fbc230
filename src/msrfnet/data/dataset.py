"""``MSRFDataset``: one split's cached arrays as the model's four tensors per sample.

Items are uint8 (normalisation happens on the GPU, so a batch moves a quarter of the bytes):

* ``image`` 3×S×S uint8 RGB;
* ``canny`` 1×S×S uint8 {0, 1}: Canny(image, canny_low, canny_high), the model's second input;
* ``mask``  1×S×S uint8 {0, 1}: grey mask ≥ 128 (the original's /255 ≥ 0.5);
* ``edge``  1×S×S uint8 {0, 1}: Canny(grey mask, edge_canny_low, edge_canny_high), the edge target;
* ``index`` int: the position in the split, for :meth:`MSRFDataset.source`.

Augmentation (if any) transforms image and grey mask first; all three maps are derived afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from msrfnet.data.augment import Augment
from msrfnet.data.cache import SplitCache
from msrfnet.data.preprocess import binarise_grey, canny_map

__all__ = ["SampleSource", "TrainingSamples", "MSRFDataset"]


@dataclass(frozen=True)
class SampleSource:
    """Where sample ``index`` came from: its files and the image's size before resizing."""

    stem: str
    image_path: Path
    mask_path: Path
    height: int
    width: int


class TrainingSamples(Dataset):
    """What every training dataset does with an RGB uint8 image and its grey mask: augment them
    (reseeded per DataLoader worker), then the Canny input, the binary mask and the mask's edge
    map, as one item (see the module docstring for the layout). Subclasses set ``augment``,
    ``canny``, ``edge_canny`` and ``_worker_seed`` (None)."""

    augment: Augment | None
    canny: tuple[float, float]
    edge_canny: tuple[float, float]
    _worker_seed: int | None

    def _reseed_for_worker(self) -> None:
        # Forked workers inherit one augmentation state, so all would draw identical transforms
        # (and each epoch would repeat the last); the worker seed differs per worker and epoch.
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed and hasattr(self.augment, "reseed"):
            self._worker_seed = info.seed
            self.augment.reseed(info.seed % 2**32)  # type: ignore[union-attr]

    def _sample(self, image: np.ndarray, grey: np.ndarray, index: int) -> dict[str, Any]:
        if self.augment is not None:
            self._reseed_for_worker()
            image, grey = self.augment(image, grey)
        canny = canny_map(image, *self.canny)
        edge = canny_map(grey, *self.edge_canny)
        mask = binarise_grey(grey)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "canny": torch.from_numpy(canny)[None],
            "mask": torch.from_numpy(mask)[None],
            "edge": torch.from_numpy(edge)[None],
            "index": index,
        }


class MSRFDataset(TrainingSamples):
    """The samples of one cached split (see the module docstring for the item layout)."""

    def __init__(
        self,
        cache: SplitCache,
        *,
        canny: tuple[float, float] = (10, 1000),
        edge_canny: tuple[float, float] = (10, 1000),
        augment: Augment | None = None,
    ) -> None:
        self.cache_path = cache.path
        self.root = cache.root
        self.split = cache.split
        self.size = cache.size
        self.stems = list(cache.stems)
        self.image_files = list(cache.image_files)
        self.mask_files = list(cache.mask_files)
        self.original_sizes = list(cache.original_sizes)
        self.canny = canny
        self.edge_canny = edge_canny
        self.augment = augment
        self._images: np.ndarray | None = cache.images
        self._masks: np.ndarray | None = cache.masks
        self._worker_seed: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Spawned DataLoader workers re-open the memory maps instead of receiving pickled copies.
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None
        return state

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None or self._masks is None:
            self._images = np.load(self.cache_path / "images.npy", mmap_mode="r")
            self._masks = np.load(self.cache_path / "masks.npy", mmap_mode="r")
        return self._images, self._masks

    def __len__(self) -> int:
        return len(self.stems)

    def source(self, index: int) -> SampleSource:
        """The original files and size (H, W) of sample ``index``, for full-resolution metrics."""
        h, w = self.original_sizes[index]
        return SampleSource(
            stem=self.stems[index],
            image_path=self.root / self.image_files[index],
            mask_path=self.root / self.mask_files[index],
            height=int(h),
            width=int(w),
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        images, masks = self._arrays()
        image = np.array(images[index])  # copy out of the read-only memory map
        grey = np.array(masks[index])
        return self._sample(image, grey, index)
