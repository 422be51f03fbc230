"""Data: discovery and pairing, validation (``check-data``), splitting, pre-processing, cache,
augmentation and the Lightning DataModule.

Flow: files → :func:`read_image` / :func:`read_mask` → :func:`preprocess_pair` → cache
(:func:`load_or_build_cache`) → :class:`MSRFDataset` (Canny maps per sample) →
:class:`MSRFDataModule`.

Names are imported on first use so ``msrf check-data`` does not pay for torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "IMAGE_EXTENSIONS": "files",
    "Pair": "files",
    "pair_files": "files",
    "read_image": "io",
    "read_mask": "io",
    "binarise_mask": "io",
    "label_map_reason": "io",
    "SPLITS": "layout",
    "split_dir": "layout",
    "split_pairs": "layout",
    "CheckReport": "check",
    "check_data": "check",
    "split_dataset": "split",
    "resize_image": "preprocess",
    "resize_mask": "preprocess",
    "preprocess_pair": "preprocess",
    "binarise_grey": "preprocess",
    "canny_map": "preprocess",
    "SplitCache": "cache",
    "load_or_build_cache": "cache",
    "PresetAugment": "augment",
    "MSRFDataset": "dataset",
    "NativeDataset": "native",
    "rescale": "resample",
    "SampleSource": "dataset",
    "MSRFDataModule": "datamodule",
    "resolve_data_root": "root",
    "sample_root": "root",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from msrfnet.data.augment import PresetAugment
    from msrfnet.data.cache import SplitCache, load_or_build_cache
    from msrfnet.data.check import CheckReport, check_data
    from msrfnet.data.datamodule import MSRFDataModule
    from msrfnet.data.dataset import MSRFDataset, SampleSource
    from msrfnet.data.files import IMAGE_EXTENSIONS, Pair, pair_files
    from msrfnet.data.io import binarise_mask, label_map_reason, read_image, read_mask
    from msrfnet.data.layout import SPLITS, split_dir, split_pairs
    from msrfnet.data.native import NativeDataset
    from msrfnet.data.preprocess import (
        binarise_grey,
        canny_map,
        preprocess_pair,
        resize_image,
        resize_mask,
    )
    from msrfnet.data.resample import rescale
    from msrfnet.data.root import resolve_data_root, sample_root
    from msrfnet.data.split import split_dataset


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'msrfnet.data' has no attribute {name!r}")
