"""``msrf train``: one run from a :class:`Config` to a run directory.

A run directory holds:

- ``config.yaml`` — the full config (also inside every checkpoint);
- ``checkpoints/last.ckpt``, ``checkpoints/best.ckpt`` — Lightning's full state (optimizer, epoch,
  best score, RNG) for ``--resume``; written atomically;
- ``last.safetensors``, ``best.safetensors`` (+ ``best_metrics.json``) — the weights with config,
  metrics and package versions, what ``msrf test/predict/export --weights`` read;
- ``logs/metrics.csv`` (and TensorBoard events when ``tensorboard`` is installed; a resumed run
  continues them in the same folder), ``history.csv`` and ``curves.png`` — loss and validation DSC
  per epoch, the whole run across resumes;
- ``predictions.png`` — image | truth | prediction of the first validation images, by the best
  weights, and ``MODEL_CARD.md`` — what was trained, from what and how well (written at the end).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import lightning as L
import torch

from msrfnet.config import Config
from msrfnet.data import MSRFDataModule, check_data, resolve_data_root
from msrfnet.errors import MSRFError, first_line
from msrfnet.safe_output import io_error
from msrfnet.train.callbacks import (
    AtomicCheckpointIO,
    CurvePlot,
    InterruptNotice,
    ProgressBar,
    ResumableCSVLogger,
    WeightsExport,
    plot_predictions,
)
from msrfnet.train.card import RunSummary, write_model_card
from msrfnet.train.machine import check_devices, check_training_memory
from msrfnet.train.module import MSRFModule, resolve_precision
from msrfnet.train.precise_bn import PreciseBN
from msrfnet.train.resume import check_resume, remove_partial_writes, resume_config
from msrfnet.train.start import load_start, read_start

__all__ = [
    "RUN_DIR_ENV",
    "validate_dataset",
    "new_run_dir",
    "build_trainer",
    "resume_config",
    "train",
]

log = logging.getLogger("msrfnet")

#: The run folder rank 0 created, for the processes Lightning's DDP launcher starts after it.
RUN_DIR_ENV = "MSRF_RUN_DIR"


def validate_dataset(root: Path, config: Config) -> str:
    """``msrf check-data`` before training: raise with a line per problem, else return the table."""

    report = check_data(root, mask_threshold=config.mask_threshold, mask_suffix=config.mask_suffix)
    if not report.ok:
        raise MSRFError(
            "\n".join(report.problems)
            + f"\n{root}: {len(report.problems)} problem(s); fix them or run msrf check-data {root}"
        )
    return report.format()


def _default_run_name() -> str:
    return datetime.now().strftime("msrf-%Y%m%d-%H%M%S")


def _is_rank_zero() -> bool:
    """False in a process of rank > 0 of a multi-process launch (Lightning's DDP children,
    torchrun, srun): those use the run folder that rank 0 created and write nothing of their own."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all((os.environ.get(v) or "0").strip() == "0" for v in ranks)


def _external_launch() -> bool:
    """Started as one of several processes by torchrun or srun (each one runs ``msrf train``)."""

    def count(var: str) -> int:
        value = os.environ.get(var, "1").strip()
        return int(value) if value.isdigit() else 1

    return ("RANK" in os.environ and count("WORLD_SIZE") > 1) or count("SLURM_STEP_NUM_TASKS") > 1


def new_run_dir(config: Config) -> Path:
    """Create the run's folder under ``config.out``, atomically, so that two runs never share one.

    An explicit ``name`` that exists is refused. The default ``msrf-<date>-<time>`` takes the first
    free of ``-2``, ``-3``, … when taken (two runs started in the same second: a job array, a
    sweep): ``mkdir`` without ``exist_ok`` decides, so only one process can get each name.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MSRFError(f"--out {out}: is a file, not a folder for run directories")
    if out.is_dir() and not out.stat().st_mode & 0o222:  # marked read-only (root ignores the bits)
        raise MSRFError(f"--out {out}: cannot write (the folder is read-only)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _io_error(out, e, "cannot create the folder for runs") from e
    base = config.name or _default_run_name()
    suffixes = itertools.count(2) if not config.name else ()
    for name in itertools.chain([base], (f"{base}-{n}" for n in suffixes)):
        run_dir = out / name
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
        except OSError as e:
            raise _io_error(run_dir, e, "cannot create the run folder") from e
    if (out / base / "checkpoints" / "last.ckpt").exists():
        hint = f"continue it with --resume {out / base} or choose another --name"
    else:
        hint = "choose another --name (msrf never writes into an existing folder)"
    raise MSRFError(f"{out / base}: already exists; {hint}")


def _shared_run_dir(config: Config) -> Path:
    """The run folder for a process of rank > 0: the one its rank 0 created (``MSRF_RUN_DIR``, set
    for Lightning's DDP children, or ``--out``/``--name`` under torchrun and SLURM)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    return Path(config.out) / config.name


def _io_error(path: Path, error: OSError, what: str = "cannot write") -> MSRFError:

    return io_error(error.filename or path, error, what)


@contextmanager
def _failures(run_dir: Path, discard: bool):
    """An I/O error becomes one line naming the path and the cause; with ``discard`` (a folder
    this process created, before training started) the folder is removed on any failure."""
    try:
        yield
    except BaseException as e:
        if discard:
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise _io_error(run_dir, e) from e
        raise


@contextmanager
def _without_lightning_noise():
    """Silence the two warnings of Lightning that say nothing to a user of ``msrf train``."""
    with warnings.catch_warnings():
        # Lightning 2.6 still uses torch's LeafSpec; the deprecation is theirs, not the user's
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
        # a resumed run's checkpoints/ holds last.ckpt, the very file it resumes from: expected
        warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty\.$")
        # frozen BatchNorm layers (a fine-tune's default) are in eval mode on purpose
        warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode at the start")
        yield


def build_trainer(
    config: Config, run_dir: Path, steps_per_epoch: int, first_epoch: int = 0
) -> L.Trainer:
    """The Trainer of a run in ``run_dir``; ``first_epoch`` (0-based) is where a resumed run
    starts: its logs continue in ``logs/`` from there (one folder, one ``metrics.csv``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    loggers = [ResumableCSVLogger(run_dir, version="logs", first_epoch=first_epoch)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        # a resumed run adds an event file beside the earlier ones; TensorBoard reads them all
        loggers.append(TensorBoardLogger(str(run_dir), name="", version="logs"))
    except ImportError:
        pass
    # only the full state of the last epoch is kept (~300 MB with Adam's moments); the best
    # weights are best.safetensors (WeightsExport), which tracks the best score across resumes
    # (monitor=None with save_top_k=1 keeps the latest epoch under one name; Lightning's save_last
    # with save_top_k=0 would write only at the very end of training)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        save_last=False,
        every_n_epochs=1,
        enable_version_counter=False,
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
        # PreciseBN after the progress bar: its end-of-training warning follows the closed bar
        callbacks=[
            WeightsExport(run_dir),
            CurvePlot(run_dir),
            checkpoint,
            InterruptNotice(run_dir),
            ProgressBar(refresh_rate=10 if torch.cuda.is_available() else 1),
            PreciseBN(config.precise_bn),
        ],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        # the validation before training (epoch 0) is Lightning's sanity check over every batch
        num_sanity_val_steps=-1 if config.validate_first and first_epoch == 0 else 0,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )


def _devices(spec: str) -> int | list[int] | str:
    if spec.isdigit():
        return int(spec)
    if "," in spec:
        return [int(s) for s in spec.split(",") if s]
    return spec


def _check_machine(config: Config) -> float:
    """Refuse ``--devices`` this machine lacks and an image size or batch it cannot hold; returns
    the estimated activation memory of a step (GiB per device)."""
    processes = check_devices(config.devices)
    return check_training_memory(
        config.image_size, config.batch_size, resolve_precision(config), processes, config.strategy
    )


def _build_trainer(config: Config, run_dir: Path, steps: int, first_epoch: int) -> L.Trainer:
    """:func:`build_trainer`, with Lightning's refusal of a setting (an unknown ``--strategy``, a
    ``--precision`` or ``--devices`` it cannot use here) as one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return build_trainer(config, run_dir, steps, first_epoch)
    except (ValueError, TypeError, MisconfigurationException) as e:
        raise MSRFError(
            f"Lightning refuses --strategy {config.strategy} / --devices "
            f"{config.devices} / --precision {config.precision} / --num-nodes "
            f"{config.num_nodes}: {first_line(e)}"
        ) from e


def train(config: Config, resume: str | Path | None = None) -> Path:
    """Train MSRF-Net; returns the run directory. Progress lines are logged at INFO.

    ``resume`` continues the run in that directory from ``checkpoints/last.ckpt`` (weights,
    optimizer, epoch, best score, RNG state); ``config`` should then be :func:`resume_config` of
    it, with any deliberate change (e.g. more ``epochs``). A new run with ``config.weights``
    starts from those weights (:mod:`msrfnet.train.start`: read, never written; recorded in
    ``config.yaml`` as ``start_weights``).

    Before anything is written: ``config`` is validated, a resume is checked against its run
    (:func:`~msrfnet.train.resume.check_resume`), the starting weights are read and checked, and
    the devices and memory against this machine. A new run gets a folder of its own
    (:func:`new_run_dir`), removed again if the set-up fails. An I/O error is one line naming the
    path and the cause; a training that ran no optimizer step, or wrote no weights, fails.
    """

    config.validate()
    if config.scale is not None and not config.patch_size:
        raise MSRFError("scale: resamples the images of a native-scale run; set patch_size too")
    if config.patch_size:  # native scale: the model input is the patch
        config.image_size = config.patch_size
    ckpt_path, step0, done, rank0 = None, 0, 0, _is_rank_zero()
    if resume is not None:
        run_dir = Path(resume)
        ckpt_path, step0, done = check_resume(run_dir, config)
    elif not config.name and _external_launch():
        raise MSRFError(
            "a multi-process launch (torchrun, srun) needs --name, so that every "
            "process uses the same run folder"
        )
    start = read_start(config) if resume is None else None
    memory = _check_machine(config)
    if resume is not None and rank0:
        remove_partial_writes(run_dir)
    root, message = resolve_data_root(config.data)
    log.info(message)
    log.info(validate_dataset(root, config))
    L.seed_everything(config.seed, workers=True, verbose=False)
    if resume is None:
        run_dir = new_run_dir(config) if rank0 else _shared_run_dir(config)
        if rank0:
            os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # for Lightning's DDP child processes
    with _failures(run_dir, discard=resume is None and rank0):
        datamodule = MSRFDataModule(config, root)
        datamodule.setup("fit")
        n_train = len(datamodule.train_set)
        if n_train < config.batch_size:
            raise MSRFError(
                f"{root}: {n_train} training images, fewer than one batch of "
                f"{config.batch_size} (lower --batch-size)"
            )
        steps = n_train // config.batch_size
        module = MSRFModule(config)
        if start is not None:
            load_start(module.model, *start)
        trainer = _build_trainer(config, run_dir, steps, done)
        if rank0:
            config.save(run_dir / "config.yaml")
    log.info(_run_line(config, run_dir, datamodule, steps, memory))
    t0 = time.perf_counter()
    with _failures(run_dir, discard=False), _without_lightning_noise():
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if trainer.global_step <= step0:
        why = (
            f"the --max-minutes {config.max_minutes} budget is used up"
            if config.max_minutes
            else "no batch"
        )
        raise MSRFError(f"{run_dir}: no training step ran ({why}); nothing was trained")
    if trainer.is_global_zero and not (run_dir / "best.safetensors").is_file():
        raise MSRFError(
            f"{run_dir}: training stopped before its first validation; no weights were written"
        )
    _finish(trainer, config, run_dir, datamodule, time.perf_counter() - t0)
    return run_dir


def _run_line(config: Config, run_dir: Path, datamodule, steps: int, memory: float) -> str:
    """The line that says what the run does, before its first epoch."""
    if config.patch_size:
        scale = f" of the images × {config.scale:g}" if config.scale else " at native scale"
        how = f"as random {config.patch_size}² crops{scale} (val: centre crops)"
    else:
        how = f"at {config.image_size}²"
    start = ""
    if config.start_weights:
        record = config.start_weights
        start = f" | from {record['file']} (sha256 {record['sha256'][:12]})"
        start += f" | BatchNorm {'frozen' if config.precise_bn == 'frozen' else 'trained'}"
        start += f" | {config.freeze} frozen" if config.freeze else ""
    schedule = config.schedule + (
        f", {config.warmup_steps} warm-up steps" * bool(config.warmup_steps)
    )
    return (
        f"run: {run_dir} | {len(datamodule.train_set)} train / {len(datamodule.val_set)} val "
        f"images {how} | variant {config.variant}{start} | {config.epochs} epochs × {steps} "
        f"steps of {config.batch_size} | lr {config.lr} ({schedule}) | precision "
        f"{resolve_precision(config)} | augment {'on' if config.augment else 'off'} | "
        f"~{memory:.2f} GiB of activations per step and device"
    )


def _finish(trainer: L.Trainer, config: Config, run_dir: Path, datamodule, elapsed: float) -> None:
    """The run's last lines (best DSC, where it started, the files), and on rank 0 the
    validation predictions of the best weights and the run's model card."""
    export = next(c for c in trainer.callbacks if isinstance(c, WeightsExport))
    plot = next(c for c in trainer.callbacks if isinstance(c, CurvePlot))
    applied = next(c.applied for c in trainer.callbacks if isinstance(c, PreciseBN))
    note = f" (BatchNorm statistics recomputed before {sum(applied)} of {len(applied)} validations)"
    first = plot.start_row()
    begin = f"; before training {first['val_dsc']:.4f}" if first else ""
    at = f" (epoch {export.best_epoch})" if export.best_epoch is not None else ""
    log.info(
        f"done in {elapsed:.0f} s; best validation DSC {export.best:.4f}{at}{begin}"
        + (note if any(applied) else "")
    )
    if config.start_weights and export.best_epoch == 0:
        log.warning(
            "the fine-tune did not improve on the starting weights' validation DSC; "
            "best.safetensors holds the starting weights"
        )
    log.info(f"weights: {run_dir / 'best.safetensors'}; curves: {run_dir / 'curves.png'}")
    if trainer.is_global_zero and (run_dir / "best.safetensors").is_file():
        figure = plot_predictions(
            run_dir / "best.safetensors",
            datamodule.val_set,
            run_dir / "predictions.png",
            config.threshold,
        )
        log.info(f"validation predictions of the best weights: {figure}")
        card = write_model_card(run_dir, config, RunSummary.of(export, plot, datamodule, elapsed))
        log.info(f"model card: {card}")
