"""Fine-tuning: a run that starts from weights (``msrf train --weights W``, ``msrfnet.finetune``).

Both build their :class:`Config` with :func:`finetune_config` from the options given explicitly
and hand it to :func:`msrfnet.train.fit.train`, which reads the starting weights with
:func:`read_start` (never writing to them) and records them in ``config.yaml``.

* What comes from the weights' own config unless given (:data:`FROM_WEIGHTS`): the input geometry
  (``image_size``, or ``patch_size`` and ``scale`` at native scale: given one, the others are not
  taken), the Canny thresholds of the input and of the edge target, the normalisation and the
  threshold; the architecture (:data:`FIXED_BY_WEIGHTS`) always, and another value is refused.
* :data:`FINETUNE_DEFAULTS` replace the paper's from-scratch recipe where not given (each a
  deviation, argued in docs/FINETUNE.md): Adam lr 5e-5 with a 5-step linear warm-up and a cosine
  decay, augmentation on, BatchNorm statistics frozen at the weights' own, a validation before
  the first epoch, and at most 30 epochs or 12 minutes of training, whichever ends first (a
  CPU-sized budget: 10–20 images of 256² on 2 cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msrfnet.config import OPTIONS, Config
from msrfnet.errors import MSRFError
from msrfnet.model.pretrained import check_state_fits
from msrfnet.safe_output import file_digest
from msrfnet.weights.checkpoint import read_checkpoint
from msrfnet.weights.resolve import explicit_weights

__all__ = [
    "FINETUNE_DEFAULTS",
    "GEOMETRY",
    "FROM_WEIGHTS",
    "FIXED_BY_WEIGHTS",
    "finetune_config",
    "describe",
    "read_start",
    "load_start",
]

#: The defaults of a run with ``weights`` (deviations from the paper's from-scratch recipe).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "lr": 5e-5,
    "schedule": "cosine",
    "warmup_steps": 5,
    "augment": True,
    "precise_bn": "frozen",
    "validate_first": True,
    "epochs": 30,
    "max_minutes": 12.0,
}
#: The input geometry: taken from the weights as a whole, or not at all when one of it is given.
GEOMETRY = ("image_size", "patch_size", "scale")
#: What a fine-tune takes from the weights' config unless given.
FROM_WEIGHTS = GEOMETRY + (
    "canny_low",
    "canny_high",
    "edge_canny_low",
    "edge_canny_high",
    "normalize",
    "threshold",
)
#: What the weights fix: another value cannot load them.
FIXED_BY_WEIGHTS = ("variant", "in_channels", "num_classes")


def _name(field: str) -> str:
    """How the user gave ``field``: its flag, else the config field's name."""
    return OPTIONS[field].flag or field


def _check_fixed(path: Path, saved: Config, values: dict[str, Any]) -> None:
    """One line for a value in ``values`` of :data:`FIXED_BY_WEIGHTS` that differs from the
    weights' (``saved``)."""
    for field in FIXED_BY_WEIGHTS:
        if field in values and values[field] != getattr(saved, field):
            raise MSRFError(
                f"{_name(field)} {values[field]}: the weights {path.name} are {field} "
                f"{getattr(saved, field)}; a fine-tune keeps their architecture (leave "
                f"{_name(field)} out, or train from scratch without --weights)"
            )


def finetune_config(given: dict[str, Any]) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """The :class:`Config` of a run from the options ``given`` explicitly, which name the
    ``weights``: the given values, then those the weights set (:data:`FROM_WEIGHTS`,
    :data:`FIXED_BY_WEIGHTS`), then :data:`FINETUNE_DEFAULTS`, then the config's defaults.
    Returns it with the defaults and the weights' values it took (for the run's first lines).

    Raises:
        MSRFError: the weights cannot be found or read, or an option given contradicts them.
    """
    path = explicit_weights(given["weights"])
    _, saved, _ = read_checkpoint(path)
    _check_fixed(path, saved, given)
    geometry_given = any(given.get(f) is not None for f in GEOMETRY)
    taken = {
        f: getattr(saved, f)
        for f in FROM_WEIGHTS + FIXED_BY_WEIGHTS
        if f not in given and not (f in GEOMETRY and geometry_given)
    }
    defaults = {k: v for k, v in FINETUNE_DEFAULTS.items() if k not in given}
    return Config(**{**defaults, **taken, **given}), defaults, taken


def describe(values: dict[str, Any]) -> str:
    """``--lr 5e-05, --augment, ...``: config values as the options that set them."""

    def one(field: str, value: Any) -> str:
        name = _name(field)
        if isinstance(value, bool) and name.startswith("--"):
            return name if value else f"--no-{name[2:]}"
        return f"{name} {value}"

    return ", ".join(one(k, v) for k, v in values.items() if v is not None)


def read_start(config: Config) -> tuple[Path, dict[str, torch.Tensor]] | None:
    """The starting weights of a new run (``config.weights``): their file and tensors, read only;
    ``config.start_weights`` records the file's name, path and SHA-256. None without weights.

    Raises:
        MSRFError: the weights are missing, unreadable or of another architecture than
            ``config``; or an option that needs starting weights is set without them.
    """
    if not config.weights:
        if config.precise_bn == "frozen":
            raise MSRFError(
                "--precise-bn frozen keeps the starting weights' BatchNorm statistics; give "
                "--weights too (from scratch there are none: only the initial 0 and 1)"
            )
        if config.freeze:
            raise MSRFError(
                f"--freeze {config.freeze} holds starting weights fixed; give --weights too "
                "(from scratch they would stay random)"
            )
        return None
    path = explicit_weights(config.weights)
    digest = file_digest(path)
    state, saved, _ = read_checkpoint(path)
    _check_fixed(path, saved, {f: getattr(config, f) for f in FIXED_BY_WEIGHTS})
    config.start_weights = {"file": path.name, "path": str(path.resolve()), "sha256": digest}
    return path, state


def load_start(model: torch.nn.Module, path: Path, state: dict[str, torch.Tensor]) -> None:
    """Copy the starting weights (and BN statistics) into ``model``; refuses, naming ``path``,
    weights that do not fit it."""
    state = check_state_fits(path, state, model)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
    )
