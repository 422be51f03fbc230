"""``msrf train``: one run from a :class:`Config` to a run directory.

A run directory holds:

- ``config.yaml`` — the full config (also inside every checkpoint);
- ``checkpoints/last.ckpt``, ``checkpoints/best.ckpt`` — Lightning's full state (optimizer, epoch,
  best score, RNG) for ``--resume``; written atomically;
- ``last.safetensors``, ``best.safetensors`` (+ ``best_metrics.json``) — the weights with config,
  metrics and package versions, what ``msrf test/predict/export --weights`` read;
- ``logs/metrics.csv`` (and TensorBoard events when ``tensorboard`` is installed; a resumed run
  writes ``logs-2/``, …), ``history.csv`` and ``curves.png`` — loss and validation DSC per epoch,
  the whole run across resumes.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import torch

from .callbacks import AtomicCheckpointIO, CurvePlot, WeightsExport
from .checkpoint import _torch_load_safe
from .config import Config
from .errors import MSRFError
from .training import MSRFModule, resolve_precision

log = logging.getLogger("msrfnet")


class _InterruptNotice(L.Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            last = self.run_dir / "checkpoints" / "last.ckpt"
            if last.exists():
                log.warning("interrupted: the last checkpoint is kept; continue with: msrf train --resume %s", self.run_dir)


def validate_dataset(root: Path, config: Config) -> str:
    """``msrf check-data`` before training: raise with one line per problem, else the summary table."""
    from .data import check_data

    report = check_data(root, mask_threshold=config.mask_threshold)
    if not report.ok:
        raise MSRFError("\n".join(report.problems) + f"\n{root}: {len(report.problems)} problem(s); fix them or run msrf check-data {root}")
    return report.format()


def new_run_dir(config: Config) -> Path:
    name = config.name or datetime.now().strftime("msrf-%Y%m%d-%H%M%S")
    run_dir = Path(config.out) / name
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        raise MSRFError(f"{run_dir}: a run already exists here; continue it with --resume {run_dir} or choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def build_trainer(config: Config, run_dir: Path, steps_per_epoch: int) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    # a resumed run logs beside the earlier logs (Lightning's CSV logger would overwrite them)
    version, n = "logs", 1
    while (run_dir / version).exists():
        n += 1
        version = f"logs-{n}"
    loggers = [CSVLogger(str(run_dir), name="", version=version)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(run_dir), name="", version=version))
    except ImportError:
        pass
    # only the full state of the last epoch is kept (~300 MB with Adam's moments); the best
    # weights are best.safetensors (WeightsExport), which tracks the best score across resumes
    # (monitor=None with save_top_k=1 keeps the latest epoch under one name; Lightning's save_last
    # with save_top_k=0 would write only at the very end of training)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, save_last=False,
        every_n_epochs=1, enable_version_counter=False,
    )
    deterministic = config.deterministic and ("warn" if torch.cuda.is_available() else True)
    from datetime import timedelta

    return L.Trainer(
        max_epochs=config.epochs,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        accelerator="auto",
        devices=config.devices if config.devices == "auto" else _devices(config.devices),
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=resolve_precision(config),
        deterministic=deterministic or None,
        benchmark=torch.cuda.is_available() and not config.deterministic,
        # every progress-bar refresh reads the logged loss back from the GPU (a host sync): on a
        # GPU, one refresh per 10 steps keeps the launch queue full in between
        callbacks=[WeightsExport(run_dir), CurvePlot(run_dir), checkpoint, _InterruptNotice(run_dir),
                   TQDMProgressBar(refresh_rate=10 if torch.cuda.is_available() else 1)],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )


def _devices(spec: str) -> int | list[int] | str:
    if spec.isdigit():
        return int(spec)
    if "," in spec:
        return [int(s) for s in spec.split(",") if s]
    return spec


def _remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files of writes that a killed run left (``.<name>.<random>.tmp`` from
    :func:`~msrfnet.checkpoint.atomic_write`; a full training state is ~300 MB)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file():
                log.info("removing %s, left by an interrupted write", tmp)
                tmp.unlink(missing_ok=True)


def resume_config(run_dir: str | Path) -> Config:
    """The config a run was started with (its ``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MSRFError(f"{run_dir}: not a run directory (no config.yaml)")
    return Config.load(path)


def train(config: Config, resume: str | Path | None = None, echo=print) -> Path:
    """Train MSRF-Net; returns the run directory.

    ``resume`` continues the run in that directory from ``checkpoints/last.ckpt`` (weights,
    optimizer, epoch, best score, RNG state); ``config`` should then be :func:`resume_config` of it,
    with any deliberate change (e.g. more ``epochs``).
    """
    from .data import MSRFDataModule, resolve_data_root

    ckpt_path = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt_path = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt_path.is_file():
            raise MSRFError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt)")
        _torch_load_safe(ckpt_path)  # refuse an unsafe or corrupt checkpoint before Lightning opens it
        _remove_partial_writes(run_dir)
    root, message = resolve_data_root(config.data)
    echo(message)
    echo(validate_dataset(root, config))
    L.seed_everything(config.seed, workers=True, verbose=False)
    if resume is None:
        run_dir = new_run_dir(config)
    config.save(run_dir / "config.yaml")
    datamodule = MSRFDataModule(config, root)
    datamodule.setup("fit")
    n_train = len(datamodule.train_set)
    if n_train < config.batch_size:
        raise MSRFError(f"{root}: {n_train} training images, fewer than one batch of {config.batch_size} (lower --batch-size)")
    steps = n_train // config.batch_size
    module = MSRFModule(config)
    trainer = build_trainer(config, run_dir, steps)
    echo(
        f"run: {run_dir} | {n_train} train / {len(datamodule.val_set)} val images at {config.image_size}² | "
        f"variant {config.variant} | {config.epochs} epochs × {steps} steps of {config.batch_size} | "
        f"lr {config.lr} | precision {resolve_precision(config)} | augment {'on' if config.augment else 'off'}"
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    elapsed = time.perf_counter() - t0
    best = next(c.best for c in trainer.callbacks if isinstance(c, WeightsExport))
    echo(f"done in {elapsed:.0f} s; best validation DSC {best:.4f}")
    echo(f"weights: {run_dir / 'best.safetensors'}; curves: {run_dir / 'curves.png'}")
    return run_dir
