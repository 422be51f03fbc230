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

from ..config import Config
from ..errors import MSRFError
from .cache import load_or_build_cache
from .dataset import MSRFDataset
from .layout import SPLITS, split_candidates
from .root import resolve_data_root

_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}


class MSRFDataModule(L.LightningDataModule):
    """Data for one run: ``root`` (default: :func:`resolve_data_root` of ``cfg.data``) at ``cfg.image_size``.

    ``setup`` loads (building when needed) the cache of each split its stage uses and exposes them
    as ``train_set``, ``val_set`` and ``test_set``; augmentation, if ``cfg.augment``, is on the
    training set only.
    """

    def __init__(self, cfg: Config, root: str | Path | None = None) -> None:
        super().__init__()
        size = cfg.image_size
        if size < 8 or size % 8:
            suggestion = max(8, round(size / 8) * 8)
            raise MSRFError(
                f"image_size {size}: must be a positive multiple of 8 (the encoder halves it 3 times); try {suggestion}"
            )
        self.cfg = cfg
        self.root = Path(root) if root is not None else resolve_data_root(cfg.data)[0]
        self.train_set: MSRFDataset | None = None
        self.val_set: MSRFDataset | None = None
        self.test_set: MSRFDataset | None = None

    def _dataset(self, split: str) -> MSRFDataset:
        cfg = self.cfg
        cache = load_or_build_cache(
            self.root, split, cfg.image_size, mask_threshold=cfg.mask_threshold, cache_dir=cfg.cache_dir
        )
        augment = None
        if cfg.augment and split == "train":
            from .augment import PresetAugment

            augment = PresetAugment(seed=cfg.seed)
        return MSRFDataset(
            cache,
            canny=(cfg.canny_low, cfg.canny_high),
            edge_canny=(cfg.edge_canny_low, cfg.edge_canny_high),
            augment=augment,
        )

    def prepare_data(self) -> None:
        """Build the caches once per node (Lightning calls this on one process) before ``setup``."""
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
                f"{self.root}: train split has {len(dataset)} images, fewer than batch_size {self.cfg.batch_size} "
                "(the last incomplete batch is dropped); lower --batch-size"
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
