"""``MSRFNet.from_pretrained`` / ``save_pretrained``: the model's side of its weight files.

A mixin, as the field's hub mixins are (timm, smp, huggingface_hub's PyTorchModelHubMixin): the
network class gets the two methods without importing anything above the model. Files, formats
and locations are :mod:`msrfnet.weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msrfnet.config import Config
from msrfnet.errors import MSRFError
from msrfnet.weights.checkpoint import read_checkpoint
from msrfnet.weights.hub import save_pretrained
from msrfnet.weights.resolve import SHIPPED_WEIGHTS, explicit_weights

__all__ = ["PretrainedMixin", "check_state_fits"]


class PretrainedMixin:
    """``from_pretrained(path=None)`` and ``save_pretrained(directory)`` for the network class."""

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, map_location: str | torch.device = "cpu"
    ):
        """The model with the shipped 2018 DSB weights
        (``msrfnet/weights/msrfnet_kdsb.safetensors``, see its model card), in eval mode; ``path``
        loads other weights: a run folder, a ``save_pretrained`` folder, ``.safetensors`` or
        ``.ckpt``. The config they were trained with is kept as ``model.msrf_config``
        (``save_pretrained`` writes it again)."""

        if path is None:
            if not SHIPPED_WEIGHTS.is_file():
                raise MSRFError(
                    f"{SHIPPED_WEIGHTS}: the shipped weights are not installed; "
                    "pass a checkpoint path"
                )
            path = SHIPPED_WEIGHTS
        path = explicit_weights(path)
        state, config, info = read_checkpoint(path)
        model = cls(
            in_channels=int(info.get("in_channels", config.in_channels)),
            num_classes=int(info.get("num_classes", config.num_classes)),
            variant=info.get("variant", config.variant),
        )
        state = check_state_fits(path, state, model)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
        )
        config.variant, config.num_classes = model.variant, model.num_classes
        config.in_channels = model.in_channels
        model.msrf_config = config
        return model.to(map_location).eval()

    def save_pretrained(
        self,
        directory: str | Path,
        config=None,
        metrics: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """``config.json`` + ``model.safetensors`` + ``README.md`` in ``directory`` (the Hugging
        Face Hub layout); ``config`` defaults to the one the weights were loaded with."""

        config = (
            config
            or getattr(self, "msrf_config", None)
            or Config(
                variant=self.variant, num_classes=self.num_classes, in_channels=self.in_channels
            )
        )
        return save_pretrained(self, directory, config, metrics, overwrite=overwrite)


def check_state_fits(path: str | Path, state: dict[str, torch.Tensor], model) -> dict[str, Any]:
    """Raise :class:`MSRFError` naming ``path`` unless ``state`` has exactly ``model``'s tensors
    and shapes (BN step counters aside); returns ``state`` without those counters."""
    variant, num_classes = model.variant, model.num_classes
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise MSRFError(
            f"{path}: these weights do not fit MSRF-Net variant={variant!r} (missing "
            f"{len(missing)} tensors e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. "
            f"{unexpected[:2]})"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise MSRFError(
                f"{path}: tensor {k} has shape {tuple(v.shape)}, the model expects "
                f"{tuple(expected[k].shape)} (a checkpoint of another variant or class count: this "
                f"one says variant={variant!r}, num_classes={num_classes})"
            )
    return state
