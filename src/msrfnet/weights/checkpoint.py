"""Saving and loading model weights safely.

Two formats, both safe to open from an untrusted source:

- ``*.safetensors`` — the weights alone (no code can run on load), with the run's config, metrics
  and package versions as string metadata. Written for the best and last epoch of every run, and
  the format of the shipped weights.
- ``*.ckpt`` — Lightning's full training state (optimizer, epoch, RNG, …) for ``--resume``, always
  opened with ``torch.load(weights_only=True)``: a file that carries a pickled object (which could
  run code on load) is refused and its payload never runs.

Every write goes to a temporary file in the same folder and is renamed over the target, so an
interrupted write never leaves a truncated checkpoint.
"""

from __future__ import annotations

import json
import pickle
import platform
from pathlib import Path
from typing import Any

import torch

from msrfnet.config import INFERENCE_FIELDS, Config
from msrfnet.errors import MSRFError
from msrfnet.safe_output import atomic_write
from msrfnet.version import __version__

__all__ = [
    "WEIGHTS_NAME",
    "HUB_WEIGHTS",
    "package_versions",
    "clean_state_dict",
    "save_weights",
    "save_torch",
    "read_checkpoint",
]

WEIGHTS_NAME = "best.safetensors"
HUB_WEIGHTS = "model.safetensors"  # the Hugging Face Hub folder layout (msrfnet.weights.hub)


def package_versions() -> dict[str, str]:
    import numpy

    out = {
        "msrfnet": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        import lightning

        out["lightning"] = lightning.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes that Lightning (``model.``) and ``torch.compile`` (``_orig_mod.``) add."""
    out = {}
    for k, v in state.items():
        if k.startswith("model."):
            k = k[len("model.") :]
        elif k.startswith(("loss.", "criterion.")):
            continue
        out[k.replace("_orig_mod.", "")] = v
    return out


def save_weights(
    path: str | Path,
    model: torch.nn.Module,
    config: Config,
    metrics: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """Write the model's weights (and BN statistics) as safetensors with the run's metadata."""
    from safetensors.torch import save

    state = clean_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    meta = {
        "format": "msrfnet",
        "variant": getattr(model, "variant", config.variant),
        "num_classes": str(getattr(model, "num_classes", config.num_classes)),
        "in_channels": str(getattr(model, "in_channels", config.in_channels)),
        "config": json.dumps(config.to_dict()),
        "metrics": json.dumps(metrics or {}),
        "versions": json.dumps(package_versions()),
    }
    data = save(state, metadata=meta)  # written by Python: a full disk is an OSError, not a panic
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as e:
        from msrfnet.safe_output import io_error

        raise io_error(path, e) from e


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a Python file, so that a write error surfaces as its
    ``OSError`` (torch's own writer reports a full disk as "unexpected pos", losing the cause)."""
    errors: list[OSError] = []

    class _Writer:
        def __init__(self, f):
            self.f = f

        def write(self, data) -> int:
            try:
                return self.f.write(data)
            except OSError as e:
                errors.append(e)
                raise

        def flush(self) -> None:
            self.f.flush()

    with open(path, "wb") as f:
        try:
            torch.save(obj, _Writer(f))
        except Exception:
            if errors:
                raise errors[0] from None
            raise


#: what torch's weights-only unpickler says (lower-cased) of an object it will not build: a
#: global (a class or function) or a call; any other unpickling error is a damaged file or no
#: checkpoint at all (random bytes, a truncated download)
_UNSAFE_OBJECT = (
    "global",
    "unrecognized function",
    "new object",
    "can only build",
    "must be imported",
)


def _torch_load_safe(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not any(marker in str(e).lower() for marker in _UNSAFE_OBJECT):
            cause = str(e).rsplit("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
            raise MSRFError(
                f"{path}: not a valid PyTorch checkpoint (damaged, or not a checkpoint: {cause})"
            ) from e
        raise MSRFError(
            f"{path}: refusing to load: the checkpoint contains pickled Python objects, which "
            "could run code when opened (only tensors and plain data are accepted); "
            "re-save it as safetensors"
        ) from e
    except PermissionError as e:
        raise MSRFError(f"{path}: cannot read the file (permission denied)") from e
    except Exception as e:  # torch.load raises many types on garbage (IndexError, KeyError, ...)
        raise MSRFError(
            f"{path}: not a valid PyTorch checkpoint (damaged, or not a checkpoint: "
            f"{type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    """Weights, config and metadata from a ``.safetensors``, a ``.ckpt``/``.pt`` or a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / (HUB_WEIGHTS if (path / HUB_WEIGHTS).is_file() else WEIGHTS_NAME)
    if not path.is_file():
        raise MSRFError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise MSRFError(f"{path}: empty file (0 bytes)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise MSRFError(
                f"{path}: not a readable safetensors file ({type(e).__name__}: {e})"
            ) from e
        info = {k: _meta_mapping(path, k, meta[k]) for k in ("metrics", "versions") if k in meta}
        header = {k: meta[k] for k in ("variant", "num_classes", "in_channels") if k in meta}
        stored = _meta_mapping(path, "config", meta.get("config", "{}"))
        config = _checkpoint_config(path, {**stored, **header})
        info.update({k: getattr(config, k) for k in header})
        return state, config, info
    ckpt = _torch_load_safe(path)
    if not isinstance(ckpt, dict):
        raise MSRFError(
            f"{path}: not an msrfnet checkpoint (a {type(ckpt).__name__}, expected a dict)"
        )
    state = ckpt.get("state_dict", ckpt)
    hp = ckpt.get("hyper_parameters", {}) or {}
    config = _checkpoint_config(path, hp.get("config", hp) if isinstance(hp, dict) else hp)
    info = {
        "metrics": ckpt.get("msrf_metrics", {}),
        "variant": config.variant,
        "num_classes": config.num_classes,
        "in_channels": config.in_channels,
    }
    return clean_state_dict(state), config, info


def _meta_mapping(path: Path, key: str, text: str) -> dict[str, Any]:
    """A safetensors metadata entry that holds a JSON object (else :class:`MSRFError`)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise MSRFError(f"{path}: malformed metadata: {key!r} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise MSRFError(f"{path}: malformed metadata: {key!r} is a JSON {kind}, not an object")
    return value


def _checkpoint_config(path: Path, values: Any) -> Config:
    """The config stored with weights; the fields inference reads must follow their rules."""

    if not isinstance(values, dict):
        kind = type(values).__name__
        raise MSRFError(f"{path}: malformed checkpoint: its config is a {kind}, not a mapping")
    return Config.from_dict(values).validate(f"{path}: malformed config", fields=INFERENCE_FIELDS)
