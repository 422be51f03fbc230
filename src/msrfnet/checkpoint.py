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
import os
import pickle
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import MSRFError

WEIGHTS_NAME = "best.safetensors"


def package_versions() -> dict[str, str]:
    import numpy

    from . import __version__

    out = {"msrfnet": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version()}
    try:
        import lightning

        out["lightning"] = lightning.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes that Lightning (``model.``) and ``torch.compile`` (``_orig_mod.``) add."""
    out = {}
    for k, v in state.items():
        if k.startswith("model."):
            k = k[len("model."):]
        elif k.startswith(("loss.", "criterion.")):
            continue
        out[k.replace("_orig_mod.", "")] = v
    return out


def save_weights(
    path: str | Path, model: torch.nn.Module, config: Config, metrics: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """Write the model's weights (and BN statistics) as safetensors with the run's metadata."""
    from safetensors.torch import save_file

    state = clean_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
        for k, v in state.items() if not k.endswith("num_batches_tracked")
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
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def _torch_load_safe(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MSRFError(
            f"{path}: refusing to load: the checkpoint contains pickled Python objects, which could run "
            f"code when opened (only tensors and plain data are accepted); re-save it as safetensors"
        ) from e
    except Exception as e:  # torch.load raises many types on garbage (IndexError, KeyError, ...)
        raise MSRFError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    """Weights, config and metadata from a ``.safetensors``, a ``.ckpt``/``.pt`` or a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
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
            raise MSRFError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        config = Config.from_dict(json.loads(meta.get("config", "{}")))
        info = {k: json.loads(meta[k]) for k in ("metrics", "versions") if k in meta}
        for k in ("variant", "num_classes", "in_channels"):
            if k in meta:
                info[k] = meta[k] if k == "variant" else int(meta[k])
        return state, config, info
    ckpt = _torch_load_safe(path)
    if not isinstance(ckpt, dict):
        raise MSRFError(f"{path}: not an msrfnet checkpoint (a {type(ckpt).__name__}, expected a dict)")
    state = ckpt.get("state_dict", ckpt)
    hp = ckpt.get("hyper_parameters", {}) or {}
    config = Config.from_dict(hp.get("config", hp))
    info = {"metrics": ckpt.get("msrf_metrics", {}), "variant": config.variant, "num_classes": config.num_classes,
            "in_channels": config.in_channels}
    return clean_state_dict(state), config, info


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """An :class:`~msrfnet.MSRFNet` in eval mode with the weights of ``path``, and its config.

    Raises:
        MSRFError: unreadable or unsafe file, or weights of another variant / class count.
    """
    from .model import MSRFNet

    state, config, info = read_checkpoint(path)
    variant = info.get("variant", config.variant)
    num_classes = int(info.get("num_classes", config.num_classes))
    in_channels = int(info.get("in_channels", config.in_channels))
    model = MSRFNet(in_channels=in_channels, num_classes=num_classes, variant=variant)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise MSRFError(
            f"{path}: these weights do not fit MSRF-Net variant={variant!r} "
            f"(missing {len(missing)} tensors e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise MSRFError(
                f"{path}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)} "
                f"(a checkpoint of another variant or class count: this one says variant={variant!r}, "
                f"num_classes={num_classes})"
            )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    config.variant, config.num_classes, config.in_channels = variant, num_classes, in_channels
    return model.to(map_location).eval(), config, info
