"""Which weights ``msrf test``, ``msrf predict`` and ``msrf export`` use.

``--weights`` may name a run folder (its ``best.safetensors``), a ``.safetensors`` file or a
Lightning ``.ckpt``/``.pt``. Without it:

* ``msrf test`` (``prefer_runs=True``) evaluates what was just trained: the newest run under
  ``./runs`` that has a ``best.safetensors`` (newest = most recently written ``best.safetensors``),
  else the shipped weights;
* ``msrf predict`` and ``msrf export`` (``prefer_runs=False``) prefer the shipped weights (a
  trained model, not whatever demo run happens to be lying around), else the newest run.

The choice is always said in one line, so a number can be traced back to its weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .checkpoint import WEIGHTS_NAME
from .errors import MSRFError

#: The weights trained on the 2018 Data Science Bowl split, shipped with the package.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "msrfnet_kdsb.safetensors"

#: Where ``msrf train`` puts its run directories (``Config.out``'s default).
RUNS_DIR = Path("runs")

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")

NO_WEIGHTS = "no weights: pass --weights RUN_DIR|FILE (no run in ./runs and no shipped weights)"


def newest_run(runs: str | Path | None = None) -> Path | None:
    """The ``best.safetensors`` of the run under ``runs`` (default ``./runs``) written last, if any."""
    runs = Path(runs) if runs is not None else RUNS_DIR
    if not runs.is_dir():
        return None
    candidates = [p for p in runs.glob(f"*/{WEIGHTS_NAME}") if p.is_file()]
    if not candidates:
        return None
    # ties (same mtime) go to the later name: run names are msrf-<date>-<time>
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.parent.name))


def explicit_weights(weights: str | Path) -> Path:
    """The checkpoint file that ``--weights`` names (a run folder becomes its best.safetensors)."""
    path = Path(weights).expanduser()
    if path.is_dir():
        best = path / WEIGHTS_NAME
        if best.is_file():
            return best
        hint = ""
        if (path / "checkpoints" / "last.ckpt").is_file():
            hint = f"; the run has not finished a validation yet, or pass {path / 'checkpoints' / 'last.ckpt'}"
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
    echo: Callable[[str], object] | None = None,
) -> Path:
    """The checkpoint to load; see the module docstring for the order. Says which via ``echo``.

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
    if echo is not None:
        echo(f"weights: {path} ({why})")
    return path


def load_one_class_model(weights: str | Path | None, *, prefer_runs: bool, echo: Callable[[str], object] | None,
                         map_location="cpu"):
    """:func:`resolve_weights`, then load them: (model, checkpoint path, Config), for the commands
    that threshold one mask (test, predict, the int8 package)."""
    from .checkpoint import load_model

    path = resolve_weights(weights, prefer_runs=prefer_runs, echo=echo)
    model, cfg, _ = load_model(path, map_location=map_location)
    if cfg.num_classes != 1:
        raise MSRFError(f"{path}: a {cfg.num_classes}-class model; msrf test/predict handle one-class models")
    return model, path, cfg


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run directory a checkpoint file belongs to (``run/best.safetensors`` or
    ``run/checkpoints/x.ckpt``: the folder holding ``config.yaml``), else None."""
    path = Path(checkpoint)
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder
    return None
