"""Training on Lightning: the LightningModule (``module``), one run from a Config to a run folder
(``fit``), resuming it (``resume``), starting it from weights (``start``; ``finetune``: the same
from Python, ``msrfnet.finetune``), the callbacks that keep a run safe and readable
(``callbacks``), its model card (``card``) and BatchNorm recalibration (``precise_bn``)."""

__all__: list[str] = []
