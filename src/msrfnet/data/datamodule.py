"""``MSRFDataModule``: caches and DataLoaders for train/val/test, configured by :class:`Config`.

The training loader reshuffles every epoch with a generator seeded by ``cfg.seed`` and drops the
last incomplete batch, giving floor(N / batch_size) batches per epoch as the original (which
shuffled once and replayed the same order each epoch; a per-epoch shuffle is the usual practice
and changes nothing else). Validation and test loaders keep file order and every sample.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from msrfnet.config import Config
from msrfnet.data.augment import PresetAugment
from msrfnet.data.cache import load_or_build_cache
from msrfnet.data.dataset import MSRFDataset
from msrfnet.data.layout import SPLITS, split_candidates
from msrfnet.data.native import NativeDataset
from msrfnet.data.root import resolve_data_root
from msrfnet.errors import MSRFError
from msrfnet.options import check_image_size

__all__ = ["MSRFDataModule"]

_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}


class MSRFDataModule(L.LightningDataModule):
    """Data for one run: ``root`` (default: :func:`resolve_data_root` of ``cfg.data``) at
    ``cfg.image_size`` (or, with ``cfg.patch_size``, crops at native scale:
    :class:`~msrfnet.data.native.NativeDataset`).

    ``setup`` loads (building when needed) the cache of each split its stage uses and exposes them
    as ``train_set``, ``val_set`` and ``test_set``; augmentation, if ``cfg.augment``, is on the
    training set only.
    """

    def __init__(self, cfg: Config, root: str | Path | None = None) -> None:
        super().__init__()
        check_image_size(cfg.image_size)
        self.cfg = cfg
        self.root = Path(root) if root is not None else resolve_data_root(cfg.data)[0]
        self.train_set: MSRFDataset | None = None
        self.val_set: MSRFDataset | None = None
        self.test_set: MSRFDataset | None = None

    def _dataset(self, split: str) -> MSRFDataset | NativeDataset:
        cfg = self.cfg
        if cfg.patch_size:  # native scale: crops read from the files (msrfnet.data.native)
            return NativeDataset(
                self.root,
                split,
                patch_size=cfg.patch_size,
                scale=cfg.scale,
                random_crop=split == "train",
                mask_threshold=cfg.mask_threshold,
                canny=(cfg.canny_low, cfg.canny_high),
                edge_canny=(cfg.edge_canny_low, cfg.edge_canny_high),
                augment=self._augment(split),
                mask_suffix=cfg.mask_suffix,
                normalize=cfg.normalize,
            )
        cache = load_or_build_cache(
            self.root,
            split,
            cfg.image_size,
            mask_threshold=cfg.mask_threshold,
            cache_dir=cfg.cache_dir,
            mask_suffix=cfg.mask_suffix,
            normalize=cfg.normalize,
        )
        return MSRFDataset(
            cache,
            canny=(cfg.canny_low, cfg.canny_high),
            edge_canny=(cfg.edge_canny_low, cfg.edge_canny_high),
            augment=self._augment(split),
        )

    def _augment(self, split: str):
        if not (self.cfg.augment and split == "train"):
            return None

        return PresetAugment(seed=self.cfg.seed)

    def prepare_data(self) -> None:
        """Build the caches once per node (Lightning calls this on one process) before ``setup``."""
        if self.cfg.patch_size:  # native scale reads the files: nothing to cache
            return
        for split in SPLITS:
            if split_candidates(self.root, split):
                self._dataset(split)

    def setup(self, stage: str | None = None) -> None:
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            if getattr(self, f"{split}_set") is None:
                setattr(self, f"{split}_set", self._dataset(split))

    def _loader(self, dataset: MSRFDataset | None, split: str, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{split}_set is not set up; call setup() first")
        workers = self.cfg.workers
        options = dict(
            batch_size=self.cfg.batch_size,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )
        if not train:
            return DataLoader(dataset, shuffle=False, drop_last=False, **options)
        if len(dataset) < self.cfg.batch_size:
            raise MSRFError(
                f"{self.root}: train split has {len(dataset)} images, fewer than batch_size "
                f"{self.cfg.batch_size} (the last incomplete batch is dropped); lower --batch-size"
            )
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(dataset, shuffle=True, drop_last=True, generator=generator, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", train=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in file order (``trainer.predict`` with this DataModule)."""
        return self._loader(self.test_set, "test", train=False)
