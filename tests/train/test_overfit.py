"""Proof that the training loop learns: the real :class:`~msrfnet.train.module.MSRFModule`
(MSRF-Net, its MSRFLoss and Adam) overfits one real image through Lightning's Trainer, and the
network in eval mode then segments that image with DSC > 0.9.

The image is the bundled sample's training image at index 10 in sorted order (30 % foreground, the
second largest share; index 12 has 41 %) at 64², batch 1 (the same image every step), Adam lr 1e-3.
BatchNorm keeps Keras' momentum 0.99 (torch 0.01), so the eval-mode running statistics lag the
training batches: eval DSC 0.55 after 100 steps, 0.78 after 175, 0.89 after 250, 0.955 after 300
(seed 0; the lead measured 0.61, 0.83, 0.91, 0.956).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from msrfnet.config import Config
from msrfnet.data import MSRFDataset, load_or_build_cache, sample_root
from msrfnet.metrics import per_image_dice_torch
from msrfnet.train.module import MSRFModule, to_inputs

SIZE = 64
STEPS = 300
INDEX = 10  # 30 % foreground; the image of the lead's measurements above


class Repeat(Dataset):
    """One sample, ``n`` times."""

    def __init__(self, item: dict, n: int):
        self.item, self.n = item, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.item


class LossLog(L.Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.eval_mode_steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.eval_mode_steps += any(not m.training for m in pl_module.model.modules())


def _one_image(tmp: Path) -> MSRFDataset:
    src = sample_root() / "train"
    image = sorted((src / "images").iterdir())[INDEX]
    for kind in ("images", "masks"):
        (tmp / "train" / kind).mkdir(parents=True)
        shutil.copy(src / kind / image.name, tmp / "train" / kind / image.name)
    return MSRFDataset(load_or_build_cache(tmp, "train", SIZE, cache_dir=tmp / "cache"))


def _eval_dsc(module: MSRFModule, item: dict) -> float:
    """DSC of the net in eval mode (BatchNorm running statistics); the module's mode is restored.

    Restoring matters: Lightning 2.x keeps each submodule's mode when ``fit`` starts, so a net left
    in eval mode would train with frozen BatchNorm statistics.
    """
    batch = {k: v[None] for k, v in item.items() if torch.is_tensor(v)}
    image, canny, mask, _ = to_inputs(batch)
    was_training = module.model.training
    module.model.eval()
    with torch.no_grad():
        pred = torch.sigmoid(module.model(image, canny).final) >= 0.5
    module.model.train(was_training)
    return float(per_image_dice_torch(pred, mask.bool())[0])


@pytest.mark.slow
def test_overfits_one_real_image_to_eval_dsc_above_0_9(tmp_path, one_thread):
    dataset = _one_image(tmp_path)
    item = dataset[0]
    assert 0.25 < float(item["mask"].float().mean()) < 0.4  # the ~30 % foreground image

    L.seed_everything(0, workers=True, verbose=False)
    config = Config(image_size=SIZE, lr=1e-3, batch_size=1, channels_last=False, workers=0)
    module = MSRFModule(config)
    untrained = _eval_dsc(module, item)
    losses = LossLog()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[losses],
    )
    t0 = time.perf_counter()
    trainer.fit(
        module, train_dataloaders=DataLoader(Repeat(item, STEPS), batch_size=1, shuffle=False)
    )
    seconds = time.perf_counter() - t0
    dsc = _eval_dsc(module, item)
    print(
        f"overfit: {STEPS} steps at {SIZE}² in {seconds:.0f} s; eval DSC {untrained:.3f} -> "
        f"{dsc:.3f}; loss {losses.losses[0]:.3f} -> {losses.losses[-1]:.3f}"
    )

    assert (
        len(losses.losses) == STEPS and losses.eval_mode_steps == 0
    )  # BatchNorm trained in train mode
    first, last = sum(losses.losses[:10]) / 10, sum(losses.losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert dsc > 0.9, f"eval DSC {dsc:.3f} after {STEPS} steps (untrained {untrained:.3f})"
