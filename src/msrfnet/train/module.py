"""Training on Lightning: a thin LightningModule around MSRFNet + MSRFLoss, and the Trainer set-up.

Defaults are the original recipe (spec §2.3–2.4): Adam lr 1e-4, batch 4, 125 epochs, constant LR,
best checkpoint by mean per-image validation DSC at threshold 0.5 (empty/empty = 1). For a
fine-tune (msrfnet/train/start.py): a linear warm-up (``warmup_steps``), BatchNorm layers kept in
eval mode (``precise_bn frozen``, and those of a frozen part) and the encoder's or the backbone's
weights held fixed (``freeze``). Data arrive as
uint8 tensors and are scaled on the device; the validation DSC is gathered across ranks by image
index so that DDP scores the whole validation set exactly once.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from msrfnet.config import Config
from msrfnet.errors import MSRFError
from msrfnet.losses import MSRFLoss
from msrfnet.metrics import per_image_dice_torch
from msrfnet.model import MSRFNet
from msrfnet.model.msrfnet import scale_pixels

__all__ = [
    "NONFINITE_CHECK_EVERY",
    "NonFiniteLossError",
    "to_inputs",
    "MSRFModule",
    "resolve_precision",
]

log = logging.getLogger(__name__)

NONFINITE_CHECK_EVERY = 50  # steps between host-side checks of the loss (no sync in between)


class NonFiniteLossError(MSRFError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def to_inputs(
    batch: dict[str, torch.Tensor], channels_last: bool = False
) -> tuple[torch.Tensor, ...]:
    """uint8 batch → float image in [0, 1], Canny map, mask, edge target (on the batch's device)."""
    image = scale_pixels(batch["image"])
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return image, batch["canny"].float(), batch["mask"].float(), batch["edge"].float()


class _TimeCosine:
    """LR factor ``½(1 + cos(π·t/T))`` of the wall time t since the first step (T = the budget)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start: float | None = None

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        if self.start is None or step == 0:
            self.start = now
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (now - self.start) / self.seconds)))


class _Schedule:
    """LR factor of a run with a warm-up: linear over the first ``warmup`` optimizer steps, then
    (``cosine``) ``½(1 + cos(π·p))`` with ``p`` the larger of the share of the ``total`` steps
    done and of the ``seconds`` budget spent (so it reaches 0 when the first of the two ends),
    else 1. Its attributes are what a checkpoint saves (LambdaLR keeps ``__dict__``): the time
    spent, and the process that measured it (a resumed run counts again from there)."""

    def __init__(self, warmup: int, total: int, cosine: bool, seconds: float | None = None):
        self.warmup, self.total, self.cosine, self.seconds = warmup, max(1, total), cosine, seconds
        self.spent, self.clock = 0.0, None

    def _tick(self, step: int) -> float:
        now, pid = time.perf_counter(), os.getpid()
        if step > 1 and self.clock is not None and self.clock[0] == pid:
            self.spent += now - self.clock[1]  # the first step's time is not counted
        self.clock = (pid, now)
        return self.spent

    def __call__(self, step: int) -> float:
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        spent = self._tick(step)
        if not self.cosine:
            return factor
        done = step / self.total
        if self.seconds:
            done = max(done, spent / self.seconds)
        return factor * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


class MSRFModule(L.LightningModule):
    def __init__(self, config: Config | dict):
        super().__init__()
        config = Config.from_dict(config) if isinstance(config, dict) else config
        self.config = config
        self.save_hyperparameters({"config": config.to_dict()})
        # sub-pixel up-convolutions: exact and the same state_dict, so checkpoints load either way
        upsampling = "subpixel" if config.subpixel else "transposed"
        self.model = MSRFNet(
            config.in_channels, config.num_classes, config.variant, upsampling=upsampling
        )
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for part in self.frozen_parts():
            part.requires_grad_(False)
        self.criterion = MSRFLoss()
        self._compiled = None
        self._nonfinite = None
        self._val_scores: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []

    def frozen_parts(self) -> list[torch.nn.Module]:
        """The parts of the network whose weights ``freeze`` holds fixed."""
        parts = {"encoder": ("encoder",), "backbone": ("encoder", "msrf")}
        return [getattr(self.model, name) for name in parts.get(self.config.freeze or "", ())]

    def frozen_batch_norms(self) -> list[_BatchNorm]:
        """The BN layers kept in eval mode while training: all of them with ``precise_bn
        frozen``, else those of the :meth:`frozen_parts`."""
        scopes = [self.model] if self.config.precise_bn == "frozen" else self.frozen_parts()
        return [m for scope in scopes for m in scope.modules() if isinstance(m, _BatchNorm)]

    def train(self, mode: bool = True):
        """``nn.Module.train``, with the frozen BN layers (:meth:`frozen_batch_norms`) left in
        eval mode: they normalise with, and never update, the starting weights' statistics."""
        super().train(mode)
        for bn in self.frozen_batch_norms():
            bn.eval()
        return self

    def on_fit_start(self) -> None:
        self.train(self.training)  # the module is built in train mode without calling train()

    # --- forward ------------------------------------------------------------------------------
    def _net(self):
        if self.config.compile and self._compiled is None:
            try:
                # kept out of the module tree so checkpoint keys carry no "_orig_mod." prefix
                object.__setattr__(self, "_compiled", torch.compile(self.model))
            except Exception as e:  # pragma: no cover - platform dependent
                log.warning("torch.compile unavailable (%s); running eagerly", e)
                self.config.compile = False
        return self._compiled if self._compiled is not None else self.model

    def forward(self, image: torch.Tensor, canny: torch.Tensor):
        return self._net()(image, canny)

    # --- steps --------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        image, canny, mask, edge = to_inputs(batch, self.config.channels_last)
        out = self(image, canny)
        loss, terms = self.criterion(out, mask, edge)
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(image)
        )
        self.log_dict(
            {f"train/{k}": v for k, v in terms.items()},
            on_step=False,
            on_epoch=True,
            batch_size=len(image),
        )
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if (batch_idx + 1) % NONFINITE_CHECK_EVERY == 0:
            self._check_finite()

    def _check_finite(self):
        if self._nonfinite is not None and bool(self._nonfinite):
            raise NonFiniteLossError(
                f"the training loss became non-finite (NaN/inf) in epoch {self.current_epoch + 1}; "
                "stopped, the last good checkpoint is kept (try a lower --lr or --precision 32)"
            )

    def on_validation_epoch_start(self):
        self._check_finite()  # before any checkpoint of this epoch can be written
        self._val_scores, self._val_index = [], []

    def validation_step(self, batch, batch_idx):
        image, canny, mask, edge = to_inputs(batch, self.config.channels_last)
        out = self(image, canny)
        loss, _ = self.criterion(out, mask, edge)
        pred = torch.sigmoid(out.final.float()) >= self.config.threshold
        self._val_scores.append(per_image_dice_torch(pred, mask.bool()))
        self._val_index.append(batch["index"].to(pred.device))
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(image))

    def on_validation_epoch_end(self):
        if not self._val_scores:
            return
        scores, index = torch.cat(self._val_scores).float(), torch.cat(self._val_index).long()
        if self.trainer.world_size > 1:
            # DistributedSampler pads ranks to equal length with repeated images: gather, dedupe
            scores = self.all_gather(scores).reshape(-1)
            index = self.all_gather(index).reshape(-1)
            order = torch.argsort(index, stable=True)
            idx_sorted = index[order]
            is_first = torch.ones_like(idx_sorted, dtype=torch.bool)
            is_first[1:] = idx_sorted[1:] != idx_sorted[:-1]
            scores, index = scores[order][is_first], idx_sorted[is_first]
        self.log("val/dsc", scores.mean(), prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log("val/n_images", float(index.numel()), sync_dist=False)

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        fused = self.device.type == "cuda" if isinstance(self.device, torch.device) else False
        opt = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.config.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            fused=fused or None,
        )
        if self.config.warmup_steps:
            schedule = _Schedule(
                self.config.warmup_steps,
                int(self.trainer.estimated_stepping_batches),
                self.config.schedule == "cosine",
                60.0 * self.config.max_minutes if self.config.max_minutes else None,
            )
            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.config.schedule == "cosine" and self.config.max_minutes:
            # a run bounded by time anneals over its time budget (not repeatable to the step)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, _TimeCosine(60.0 * self.config.max_minutes)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.config.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, self.config.epochs)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if self.config.schedule != "constant":
            raise MSRFError(f"unknown --schedule {self.config.schedule!r}: use constant or cosine")
        return opt

    # --- checkpoint extras: RNG state for --resume ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        np_state = np.random.get_state()
        checkpoint["msrf_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "python": list(random.getstate()[1]),
        }
        checkpoint["msrf_metrics"] = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("msrf_rng")
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(
            ("MT19937", rng["numpy"].numpy().astype(np.uint32), int(rng["numpy_pos"]), 0, 0.0)
        )
        state = tuple(int(x) for x in rng["python"])
        random.setstate((3, state, None))


def resolve_precision(config: Config) -> str:
    if config.precision != "auto":
        return config.precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"
