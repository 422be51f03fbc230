"""Which weights ``msrf test``, ``msrf predict`` and ``msrf export`` use.

``--weights`` may name a run folder (its ``best.safetensors``), a ``.safetensors`` file, a
Lightning ``.ckpt``/``.pt``, a Hub-layout folder or ``shipped`` (the shipped weights). Without it:

* ``msrf test`` (``prefer_runs=True``) evaluates what was just trained: the newest run under
  ``./runs`` that has a ``best.safetensors`` (newest = most recently written ``best.safetensors``),
  else the shipped weights;
* ``msrf predict`` and ``msrf export`` (``prefer_runs=False``) prefer the shipped weights (a
  trained model, not whatever demo run happens to be lying around), else the newest run.

A command says the choice in one line (``announce``, logged at INFO), so a number can be traced
back to its weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from msrfnet.errors import MSRFError
from msrfnet.weights.checkpoint import HUB_WEIGHTS, WEIGHTS_NAME

__all__ = [
    "SHIPPED_WEIGHTS",
    "SHIPPED",
    "RUNS_DIR",
    "CHECKPOINT_SUFFIXES",
    "NO_WEIGHTS",
    "newest_run",
    "explicit_weights",
    "resolve_weights",
    "run_dir_of",
]

#: The weights trained on the 2018 Data Science Bowl split, shipped with the package.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "msrfnet_kdsb.safetensors"

#: ``--weights shipped`` names the shipped weights (a file or folder of that name, if one exists
#: in the working folder, is taken instead: the name says what it always said).
SHIPPED = "shipped"

#: Where ``msrf train`` puts its run directories (``Config.out``'s default).
RUNS_DIR = Path("runs")

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")

log = logging.getLogger("msrfnet")

NO_WEIGHTS = "no weights: pass --weights RUN_DIR|FILE (no run in ./runs and no shipped weights)"


def newest_run(runs: str | Path | None = None) -> Path | None:
    """The ``best.safetensors`` of the newest run under ``runs`` (default ``./runs``), if any."""
    runs = Path(runs) if runs is not None else RUNS_DIR
    if not runs.is_dir():
        return None
    candidates = [p for p in runs.glob(f"*/{WEIGHTS_NAME}") if p.is_file()]
    if not candidates:
        return None
    # ties (same mtime) go to the later name: run names are msrf-<date>-<time>
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.parent.name))


def explicit_weights(weights: str | Path) -> Path:
    """The checkpoint file that ``--weights`` names (a run folder becomes its best.safetensors,
    ``shipped`` the shipped weights)."""
    if str(weights) == SHIPPED and not Path(SHIPPED).exists():
        if not SHIPPED_WEIGHTS.is_file():
            raise MSRFError(f"--weights shipped: {SHIPPED_WEIGHTS} is not installed")
        return SHIPPED_WEIGHTS
    path = Path(weights).expanduser()
    if path.is_dir():
        if (path / HUB_WEIGHTS).is_file():  # a save_pretrained folder
            return path / HUB_WEIGHTS
        best = path / WEIGHTS_NAME
        if best.is_file():
            return best
        hint = ""
        if (path / "checkpoints" / "last.ckpt").is_file():
            hint = (
                "; the run has not finished a validation yet, "
                f"or pass {path / 'checkpoints' / 'last.ckpt'}"
            )
        raise MSRFError(f"{path}: run folder without {WEIGHTS_NAME}{hint}")
    if not path.exists():
        raise MSRFError(f"{path}: no such weights file or run folder")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise MSRFError(f"{path}: not a checkpoint (expected a run folder, .safetensors or .ckpt)")
    return path


def resolve_weights(
    weights: str | Path | None,
    *,
    prefer_runs: bool,
    runs: str | Path | None = None,
    announce: bool = False,
) -> Path:
    """The checkpoint to load; see the module docstring for the order. ``announce`` logs which,
    and why, in one line (``weights: PATH (WHY)``).

    Raises:
        MSRFError: the named path is missing or not a checkpoint, or nothing is found by default.
    """
    if weights is not None:
        path, why = explicit_weights(weights), "--weights"
    else:
        run = newest_run(runs)
        shipped = SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None
        runs_name = f"./{Path(runs) if runs is not None else RUNS_DIR}"
        ordered = [(run, f"newest run in {runs_name}"), (shipped, "shipped weights")]
        if not prefer_runs:
            ordered.reverse()
        found = [(p, w) for p, w in ordered if p is not None]
        if not found:
            raise MSRFError(NO_WEIGHTS)
        path, why = found[0]
    if announce:
        log.info("weights: %s (%s)", path, why)
    return path


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run directory a checkpoint file belongs to (``run/best.safetensors`` or
    ``run/checkpoints/x.ckpt``: the folder holding ``config.yaml``), else None."""
    path = Path(checkpoint)
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder
    return None
