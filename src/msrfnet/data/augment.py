"""Optional training augmentation (``--augment``); the original uses none, so it is off by default.

The preset, applied to the cached 256² image and its grey mask together, before the Canny maps:

=========================  ==============================================================
HorizontalFlip, p 0.5      nuclei, polyps and lesions have no preferred orientation
VerticalFlip, p 0.5
RandomRotate90, p 0.5
Affine, p 0.5              scale 0.9–1.1, translate ±6.25 %, rotate ±15°, reflected border
RandomBrightnessContrast   brightness and contrast ±0.1, p 0.5 (image only)
=========================  ==============================================================

The mask passes as albumentations' ``mask`` with **linear** interpolation (like the image), not the
default nearest: the cached mask is the anti-aliased grey mask (the original binarises it at 0.5
and takes Canny of it for the edge target), so nearest would turn its soft border into staircase
steps and change the edge target. Borders are reflected rather than filled with 0, which would
paint a black frame (and spurious Canny edges) onto bright-field images.

albumentations is imported only here and only when augmentation is on: a GPU machine without it
can still train and evaluate.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import cv2
import numpy as np

__all__ = ["Augment", "PresetAugment"]

Augment = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class PresetAugment:
    """The preset as a callable ``(image S×S×3 uint8, grey mask S×S uint8) → (image, grey mask)``.

    ``seed`` seeds albumentations' own random state (it ignores numpy's and Python's global seeds);
    :meth:`reseed` gives each DataLoader worker its own stream.
    """

    def __init__(self, seed: int | None = None) -> None:
        # albumentations otherwise asks the network for a newer version at import (offline clusters)
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        try:
            import albumentations as A
        except ImportError as err:  # pragma: no cover - depends on the environment
            from msrfnet.errors import MSRFError

            raise MSRFError(
                f"augmentation needs albumentations (pip install albumentations): {err}"
            ) from None
        self.transform = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.RandomRotate90(p=0.5),
                A.Affine(
                    scale=(0.9, 1.1),
                    translate_percent=(-0.0625, 0.0625),
                    rotate=(-15, 15),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_LINEAR,
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=0.5,
                ),
                A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
            ],
            seed=seed,
        )

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (called once per DataLoader worker)."""
        self.transform.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.transform(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
        return out["image"], out["mask"]
