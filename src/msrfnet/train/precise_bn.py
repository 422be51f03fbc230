"""Precise BatchNorm statistics: population statistics that match the weights being evaluated.

The original uses Keras' BN momentum 0.99 (torch ``momentum=0.01``): the running statistics are an
exponential moving average (EMA) that still holds ``(1 - m)^t`` of its initial values (mean 0,
variance 1) after ``t`` steps, 47 % after the 75 steps of the demo, so every eval-mode number of a
short run describes a network that does not exist. "Precise BN" (detectron2's ``PreciseBN`` hook,
timm) replaces them by a cumulative average over training batches in train mode, with no weight
update.

The rule (``--precise-bn auto``, the default): recompute before each validation, hence before the
weights of that epoch are saved, while ``(1 - m)^t > STALE_BOUND`` (1 %) for the slowest BN layer,
with ``t`` the optimizer steps of the run so far: i.e. while the original's EMA could not have
forgotten its initial values. For momentum 0.01 that is ``t < 459``: the original recipe on kdsb
(134 steps an epoch) is recalibrated after epochs 1–3 only and left to the EMA from epoch 4 on.
``on`` recomputes before every validation, ``off`` never. Training itself is unchanged either way
(train-mode BN uses batch statistics; the RNG is forked, the training loader is not touched).
``frozen`` (a fine-tune's default) never recomputes either: its BN layers stay in eval mode with
the starting weights' statistics throughout (:meth:`msrfnet.train.module.MSRFModule.train`).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from msrfnet.config import PRECISE_BN
from msrfnet.errors import MSRFError
from msrfnet.metrics import per_image_dice_torch
from msrfnet.train.module import to_inputs

__all__ = [
    "STALE_BOUND",
    "MAX_BATCHES",
    "GAP_WARNING",
    "batch_norms",
    "stale_weight",
    "check_mode",
    "needs_recalibration",
    "Snapshot",
    "recompute_bn_stats",
    "batch_statistics",
    "clean_dataset",
    "validation_dsc",
    "dsc_gap",
    "PreciseBN",
]

log = logging.getLogger("msrfnet")

STALE_BOUND = 0.01  # largest weight the EMA's initial values may still hold in eval-mode numbers
MAX_BATCHES = 100  # batches averaged per recomputation (fewer when an epoch has fewer)
GAP_WARNING = 0.1  # eval-mode vs batch-statistics validation DSC gap that earns a warning


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def stale_weight(momentum: float | None, steps: int) -> float:
    """Weight ``(1 - momentum)^steps`` that an EMA's initial values still hold after ``steps``
    updates (0 for ``momentum=None``, torch's cumulative average)."""
    return 0.0 if momentum is None else (1.0 - momentum) ** max(0, steps)


def check_mode(mode: str) -> str:
    if mode not in PRECISE_BN:
        raise MSRFError(f"precise_bn {mode!r}: use one of {', '.join(PRECISE_BN)}")
    return mode


def needs_recalibration(
    mode: str, model: nn.Module, steps: int, bound: float = STALE_BOUND
) -> bool:
    """The rule of the module docstring: ``on``/``off``, or for ``auto`` whether the slowest BN
    layer's EMA still holds more than ``bound`` of its initial values after ``steps`` steps."""
    if check_mode(mode) != "auto":
        return mode == "on"
    return any(stale_weight(bn.momentum, steps) > bound for bn in batch_norms(model))


Snapshot = list[tuple[Any, list[torch.Tensor]]]  # per BN layer: momentum, buffers


def _snapshot(bns: list[_BatchNorm]) -> Snapshot:
    return [(bn.momentum, [b.detach().clone() for b in bn.buffers()]) for bn in bns]


def _restore(bns: list[_BatchNorm], snapshot: Snapshot, stats: bool = True) -> None:
    """Momenta and ``num_batches_tracked`` back, and the running statistics too if ``stats``
    (in-place copies: valid inside inference mode, and the buffers stay normal tensors)."""
    for bn, (momentum, saved) in zip(bns, snapshot):
        bn.momentum = momentum
        for name, old in zip([n for n, _ in bn.named_buffers()], saved):
            if stats or name == "num_batches_tracked":
                getattr(bn, name).copy_(old)


@contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval flag restored on exit (Lightning keeps them per module)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def recompute_bn_stats(
    model: nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any]
) -> int:
    """Replace the running statistics of every BN layer of ``model`` by their cumulative average
    over ``batches`` (``forward(batch)`` runs the model on one) in train mode, without gradients;
    returns the number of batches. Momenta, train/eval mode, ``num_batches_tracked`` and the RNG
    state (dropout) are restored; with no batch at all, or on an error, the old statistics are."""
    bns = batch_norms(model)
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    n = 0
    forked = torch.random.fork_rng(devices=devices)  # dropout draws no training random numbers
    with torch.inference_mode(False), torch.no_grad(), forked, _modes_kept(model):
        snapshot = _snapshot(bns)
        try:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # torch: running = cumulative average over the batches seen
            model.train()
            for batch in batches:
                forward(batch)
                n += 1
        except BaseException:
            n = 0
            raise
        finally:
            _restore(bns, snapshot, stats=n == 0)
    return n


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """BN layers normalise with each batch's own statistics (train mode), the rest of ``model``
    stays as it is (dropout off in eval), and the running statistics are left untouched."""
    bns = batch_norms(model)
    snapshot = _snapshot(bns)
    with torch.no_grad(), _modes_kept(model):
        try:
            for bn in bns:
                bn.train()
            yield
        finally:
            _restore(bns, snapshot)


def clean_dataset(dataset):
    """A shallow copy of a training dataset without its augmentation (inputs as at inference; the
    augmentation's random state stays untouched)."""
    if getattr(dataset, "augment", None) is None:
        return dataset
    dataset = copy.copy(dataset)
    dataset.augment = None
    return dataset


def validation_dsc(
    loader: Iterable[dict], forward: Callable[[Any], Any], threshold: float
) -> float:
    """Mean per-image DSC of the final mask over ``loader`` (the validation score of training)."""
    scores = []
    for batch in loader:
        pred = torch.sigmoid(forward(batch).final.float()) >= threshold
        scores.append(per_image_dice_torch(pred, batch["mask"].to(pred.device).bool()))
    return float(torch.cat(scores).mean()) if scores else float("nan")


def dsc_gap(
    model: nn.Module, loader: Iterable[dict], forward: Callable[[Any], Any], threshold: float = 0.5
) -> tuple[float, float]:
    """Validation DSC of ``model`` in eval mode and with BN batch statistics (dropout off both
    times, running statistics untouched), and a warning through the ``msrfnet`` logger when the
    eval-mode one is lower by more than ``GAP_WARNING``: the running statistics do not match."""
    with torch.no_grad(), _modes_kept(model):
        model.eval()
        eval_dsc = validation_dsc(loader, forward, threshold)
        with batch_statistics(model):
            batch_dsc = validation_dsc(loader, forward, threshold)
    if batch_dsc - eval_dsc > GAP_WARNING:
        log.warning(
            "validation DSC %.3f with the BatchNorm running statistics but %.3f with batch "
            "statistics: the running statistics do not match the weights; train with "
            "--precise-bn on",
            eval_dsc,
            batch_dsc,
        )
    return eval_dsc, batch_dsc


class PreciseBN(L.Callback):
    """Applies the rule before each validation (logged as ``precise_bn``, 1 or 0: in the metrics
    saved with the weights and in ``history.csv``); at the end of training, :func:`dsc_gap` of the
    last weights on the validation set (rank 0).

    Batches come from a loader of its own over the training set (shuffled by a generator seeded
    with the step count, no augmentation, at most ``max_batches`` or one epoch), so the training
    loader's order and workers are not disturbed. Under DDP every rank computes the statistics
    from the same batches, so the ranks agree without communication.
    """

    def __init__(self, mode: str = "auto", max_batches: int = MAX_BATCHES):
        self.mode = check_mode(mode)
        self.max_batches = max_batches
        self.applied: list[bool] = []  # one decision per validation, for the run's report
        self.gap: tuple[float, float] | None = None  # dsc_gap of the last weights

    @staticmethod
    def _forward(trainer: L.Trainer, pl_module) -> Callable[[Any], Any]:

        def forward(batch):
            batch = trainer.strategy.batch_to_device(batch)
            image, canny, *_ = to_inputs(batch, pl_module.config.channels_last)
            with trainer.precision_plugin.train_step_context():  # autocast as in training
                return pl_module.model(image, canny)  # the eager module, not a compiled one

        return forward

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        applied = needs_recalibration(self.mode, pl_module.model, trainer.global_step)
        if applied:
            train = trainer.train_dataloader
            dataset, batch_size = clean_dataset(train.dataset), train.batch_size
            count = min(self.max_batches, len(dataset) // batch_size)
            generator = torch.Generator().manual_seed(pl_module.config.seed + trainer.global_step)
            loader = DataLoader(
                dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator
            )
            batches = itertools.islice(loader, count)
            forward = self._forward(trainer, pl_module)
            applied = recompute_bn_stats(pl_module.model, batches, forward) > 0
        self.applied.append(applied)
        pl_module.log("precise_bn", float(applied), on_epoch=True, sync_dist=False)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        val = trainer.val_dataloaders
        if not trainer.is_global_zero or val is None or not self.applied:
            return
        loader = DataLoader(val.dataset, batch_size=val.batch_size)
        self.gap = dsc_gap(
            pl_module.model, loader, self._forward(trainer, pl_module), pl_module.config.threshold
        )
