"""``msrf train --resume RUN``: what a resumed run may change, and the checks made before it
writes anything (the run's config, its last checkpoint, the epochs left)."""

from __future__ import annotations

import logging
from pathlib import Path

from msrfnet.config import RESUME_CHANGEABLE, Config
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet
from msrfnet.model.pretrained import check_state_fits
from msrfnet.weights.checkpoint import _torch_load_safe, clean_state_dict

__all__ = ["check_resume_changes", "resume_config", "check_resume", "remove_partial_writes"]

log = logging.getLogger("msrfnet")


def check_resume_changes(saved: Config, new: Config) -> None:
    """Refuse, naming the field, a change to a resumed run outside :data:`RESUME_CHANGEABLE`.

    ``data`` may name the same folder differently; a cosine schedule fixes its length (epochs, or
    minutes) when the run starts, so those cannot change either; nor can frozen BatchNorm
    statistics (``precise_bn frozen``) be switched on or off: it changes what BN layers learn.
    """
    for name in saved.to_dict():
        was, now = getattr(saved, name), getattr(new, name)
        if was == now or name in RESUME_CHANGEABLE:
            continue
        if name == "data" and None not in (was, now) and Path(was).resolve() == Path(now).resolve():
            continue
        raise MSRFError(
            f"{name}: cannot change when resuming (the run has {was!r}, asked "
            f"{now!r}); it would change what the run learns; start a new run for it"
        )
    if "frozen" in (saved.precise_bn, new.precise_bn) and saved.precise_bn != new.precise_bn:
        raise MSRFError(
            f"precise_bn: cannot change when resuming between frozen and another mode (the run "
            f"has {saved.precise_bn!r}, asked {new.precise_bn!r}); start a new run for it"
        )
    if saved.schedule == "cosine":
        for name in ("epochs", "max_minutes"):
            if getattr(saved, name) != getattr(new, name):
                raise MSRFError(
                    f"{name}: cannot change when resuming a cosine-schedule run (its "
                    f"learning rate anneals over the {name} it started with, "
                    f"{getattr(saved, name)!r})"
                )


def resume_config(run_dir: str | Path) -> Config:
    """The config a run was started with (its ``config.yaml``, validated: one line naming the
    file when it is unreadable or corrupt)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MSRFError(f"{run_dir}: not a run directory (no config.yaml)")
    return Config.load(path)


def check_resume(run_dir: Path, config: Config) -> tuple[Path, int, int]:
    """Everything ``--resume`` needs, checked before anything is written: the checkpoint is safe
    and fits ``config``; ``config`` changes only what :data:`~msrfnet.config.RESUME_CHANGEABLE`
    allows, against ``config.yaml`` and the checkpoint's own config; epochs remain to be trained.
    Returns the checkpoint's path, optimizer step and number of epochs done."""

    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt_path.is_file():
        raise MSRFError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt)")
    check_resume_changes(resume_config(run_dir), config)
    ckpt = _torch_load_safe(ckpt_path)  # refuses an unsafe or corrupt checkpoint
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise MSRFError(f"{ckpt_path}: not a training checkpoint of msrf train (no state_dict)")
    hp = ckpt.get("hyper_parameters")
    saved = hp.get("config") if isinstance(hp, dict) else None
    if isinstance(saved, dict):
        try:
            check_resume_changes(Config.from_dict(saved), config)
        except MSRFError as e:
            raise MSRFError(
                f"{ckpt_path}: {e} (config.yaml disagrees with this checkpoint)"
            ) from None
    model = MSRFNet(config.in_channels, config.num_classes, config.variant)
    check_state_fits(ckpt_path, clean_state_dict(ckpt["state_dict"]), model)
    done = int(ckpt.get("epoch", -1)) + 1
    if done >= config.epochs:
        raise MSRFError(
            f"{run_dir}: {done} of {config.epochs} epochs are done, nothing to resume; "
            f"give more --epochs"
        )
    return ckpt_path, int(ckpt.get("global_step", 0)), done


def remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files of writes that a killed run left (``.<name>.<random>.tmp`` from
    :func:`~msrfnet.safe_output.atomic_write`; a full training state is ~300 MB)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file():
                log.info("removing %s, left by an interrupted write", tmp)
                tmp.unlink(missing_ok=True)
