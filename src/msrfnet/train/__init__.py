"""Training on Lightning: the LightningModule (``module``), one run from a Config to a run folder
(``fit``), the callbacks that keep a run safe and readable (``callbacks``) and BatchNorm
recalibration (``precise_bn``)."""

__all__: list[str] = []
