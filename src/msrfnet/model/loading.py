"""Loading MSRF-Net from weight files for the commands: a model in eval mode and its config.

The files and where they are found belong to :mod:`msrfnet.weights`; building the network from
them belongs here, next to the network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from msrfnet.errors import MSRFError
from msrfnet.model.msrfnet import MSRFNet
from msrfnet.model.pretrained import check_state_fits
from msrfnet.weights.checkpoint import read_checkpoint
from msrfnet.weights.resolve import resolve_weights

__all__ = ["load_model", "check_state_fits", "load_one_class_model"]


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """An :class:`~msrfnet.MSRFNet` in eval mode with the weights of ``path``, and its config.

    Raises:
        MSRFError: unreadable or unsafe file, or weights of another variant / class count.
    """
    state, config, info = read_checkpoint(path)
    variant = info.get("variant", config.variant)
    num_classes = int(info.get("num_classes", config.num_classes))
    in_channels = int(info.get("in_channels", config.in_channels))
    model = MSRFNet(in_channels=in_channels, num_classes=num_classes, variant=variant)
    state = check_state_fits(path, state, model)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
    )
    config.variant, config.num_classes, config.in_channels = variant, num_classes, in_channels
    return model.to(map_location).eval(), config, info


def load_one_class_model(
    weights: str | Path | None,
    *,
    prefer_runs: bool,
    announce: bool = True,
    map_location="cpu",
):
    """:func:`resolve_weights` (``announce``: saying which), then load them: (model, checkpoint
    path, Config), for the commands that threshold one mask (test, predict, the int8 package)."""
    path = resolve_weights(weights, prefer_runs=prefer_runs, announce=announce)
    model, cfg, _ = load_model(path, map_location=map_location)
    if cfg.num_classes != 1:
        raise MSRFError(
            f"{path}: a {cfg.num_classes}-class model; msrf test/predict handle one-class models"
        )
    return model, path, cfg
