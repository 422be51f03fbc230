"""One typed configuration for a run: the only way options travel from the CLI to the code.

It is saved as ``config.yaml`` in every run directory and inside every checkpoint, so a run can be
repeated and a checkpoint knows how it was made. Defaults are the original recipe (spec §2).

Each field is declared once, where it is defined: its type, default, rule, help text, its ``msrf
train`` flag (if any) and whether a resumed run may change it or inference reads it (an
:class:`Option`). ``msrf train``'s options (:mod:`msrfnet.cli.train`), :meth:`Config.validate`,
:data:`RESUME_CHANGEABLE` and :data:`INFERENCE_FIELDS` are all made from these declarations, so a
new option is one new field.
"""

from __future__ import annotations

import dataclasses
from argparse import ArgumentTypeError
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from msrfnet import options as opt
from msrfnet.errors import MSRFError

__all__ = [
    "VARIANTS",
    "NORMALIZATIONS",
    "SCHEDULES",
    "PRECISE_BN",
    "FREEZE",
    "PRECISIONS",
    "INFERENCE_FIELDS",
    "RESUME_CHANGEABLE",
    "OPTIONS",
    "Option",
    "Config",
]

VARIANTS = ("official", "clean")  # the model's wirings (msrfnet.model.MSRFNet)
#: How 16-bit and float images become 0–255 (msrfnet.data.io.to_uint8; uint8 images stay as they
#: are): "minmax" stretches each image's own range, "percentile" its 1–99.8 % range (clipped).
NORMALIZATIONS = ("minmax", "percentile")
SCHEDULES = ("constant", "cosine")
#: When BN statistics are recomputed (msrfnet/train/precise_bn.py); "frozen" keeps the starting
#: weights' statistics (BN layers in eval mode throughout; the fine-tune default: train/start.py).
PRECISE_BN = ("auto", "on", "off", "frozen")
#: What ``--freeze`` can hold fixed in a fine-tune: the encoder E1–E4 (1.2 M parameters), or the
#: backbone, the encoder and the MSRF sub-network (22.9 M of 24.6 M; backward then skips them).
FREEZE = ("encoder", "backbone")
#: Lightning's precisions; "auto" = bf16-mixed on a GPU, 32 on a CPU.
PRECISIONS = tuple("auto 32-true 32 bf16-mixed 16-mixed bf16-true 16-true 64-true 64".split())


@dataclass(frozen=True)
class Option:
    """What one :class:`Config` field is, declared once beside it: the ``rule`` its value follows
    (:mod:`msrfnet.options`: ``msrf train``'s ``type=`` and :meth:`Config.validate`), what it means
    (``help``: the field's documentation and its ``msrf train --help`` text), its ``flag`` in ``msrf
    train`` (None: a config-only field) and the ``section`` of ``--help`` it is listed under,
    whether a resumed run may change it (``resume``) and whether inference reads it from a
    checkpoint (``inference``)."""

    rule: Callable[[Any], Any]
    help: str
    flag: str | None = None
    section: str = ""
    resume: bool = False
    inference: bool = False

    @property
    def switch(self) -> bool:
        """A true/false option: ``--flag`` sets it, ``--no-flag`` clears it."""
        return self.rule is opt.boolean


def _option(
    default: Any,
    rule: Callable[[Any], Any],
    help: str,
    *,
    section: str,
    flag: str | None = None,
    resume: bool = False,
    inference: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A :class:`Config` field with its :class:`Option` (``factory`` for a mutable default)."""
    metadata = {"option": Option(rule, help, flag, section, resume, inference)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# The sections of ``msrf train --help``, in the order of the fields: one declarer per section.
_data = partial(_option, section="data (the dataset and how its images become model inputs)")
_model = partial(_option, section="model")
_optim = partial(
    _option, section="optimisation (original: Adam 1e-4, batch 4, 125 epochs, constant LR)"
)
_run = partial(_option, section="execution (where and how fast it runs)")
_output = partial(_option, section="output")


@dataclass
class Config:
    """The options of a run, each declared once with its default, rule and help (:class:`Option`,
    :data:`OPTIONS`). The field order is ``config.yaml``'s."""

    # --- data
    data: str | None = _data(
        None,
        opt.optional(opt.path_text),
        "dataset folder with train/ val/ test/ (default: ./data/kdsb, else the bundled sample)",
        flag="--data",
    )
    image_size: int = _data(
        256,  # the original resizes every image to 256×256 (Lanczos)
        opt.image_size,
        "square model input size, a multiple of 8 (original: 256); training keeps ~0.38 GiB "
        "(bf16) or ~0.74 GiB (float32) per 256² image, scaling with pixels, and refuses a size "
        "this machine cannot hold",
        flag="--image-size",
        inference=True,
    )
    patch_size: int | None = _data(
        None,  # None: the paper's resize protocol
        opt.optional(opt.image_size),
        "train at native scale: random P×P crops of each image (smaller images reflected up to "
        "P) instead of resizing whole images to --image-size; validation on each image's centre "
        "crop; predict/test then tile with P×P windows (a multiple of 8)",
        flag="--patch-size",
        inference=True,
    )
    scale: float | None = _data(
        None,
        opt.optional(opt.scale),
        "with --patch-size: resample every image by this factor before cropping (0.5 halves "
        "its sides); predict/test resample by the same factor before tiling",
        flag="--scale",
        inference=True,
    )
    canny_low: int = _data(
        10,
        opt.nonnegative_int,
        "low Canny threshold of the image-gradient input (original: 10)",
        flag="--canny-low",
        inference=True,
    )
    canny_high: int = _data(
        1000,
        opt.nonnegative_int,
        "high Canny threshold of the image-gradient input (original: 1000)",
        flag="--canny-high",
        inference=True,
    )
    edge_canny_low: int = _data(
        10, opt.nonnegative_int, "low Canny threshold of the edge target (original: 10)"
    )
    edge_canny_high: int = _data(
        1000, opt.nonnegative_int, "high Canny threshold of the edge target (original: 1000)"
    )
    mask_threshold: float | None = _data(
        None,
        opt.optional(opt.finite_float),
        "foreground = mask value > T (needed for label-map masks; default: binarise at half range)",
        flag="--mask-threshold",
        inference=True,
    )
    mask_suffix: str = _data(
        "",
        opt.name_suffix,
        "masks are named <image stem><suffix> (ISIC: _segmentation); default: the same stem",
        flag="--mask-suffix",
    )
    normalize: str = _data(
        "minmax",
        opt.choice(NORMALIZATIONS),
        "16-bit and float images to 0-255: minmax (each image's own range, default) or "
        "percentile (its 1-99.8 % range, clipped); recorded in the checkpoint and applied the "
        "same way by test, predict and Segmenter",
        flag="--normalize",
        inference=True,
    )
    augment: bool = _data(
        False,
        opt.boolean,
        "flips, rot90, mild affine, brightness/contrast (off in the original)",
        flag="--augment",
    )
    cache_dir: str | None = _data(
        None,
        opt.optional(opt.path_text),
        "where preprocessed arrays are cached (default: the user's cache folder, "
        "~/.cache/msrfnet on Linux; the dataset folder is only read)",
        flag="--cache-dir",
        resume=True,
    )
    # --- model
    variant: str = _model(
        "official",
        opt.choice(VARIANTS),
        "official (the Keras graph, default) or clean (Fig. 2a wiring)",
        flag="--variant",
        inference=True,
    )
    in_channels: int = _model(3, opt.positive_int, "image channels", inference=True)
    num_classes: int = _model(1, opt.positive_int, "output channels", inference=True)
    weights: str | None = _model(
        None,
        opt.optional(opt.path_text),
        "fine-tune: start from these weights (shipped, a run folder, .safetensors, .ckpt or a "
        "Hub folder); size, Canny thresholds and normalisation then come from them unless given, "
        "and the fine-tune defaults apply (docs/FINETUNE.md)",
        flag="--weights",
    )
    start_weights: dict[str, str] | None = _model(
        None,
        opt.optional(opt.mapping),
        "where a fine-tune started: the weights' file name, path and SHA-256 (set by msrf train)",
    )
    freeze: str | None = _model(
        None,
        opt.optional(opt.choice(FREEZE)),
        "fine-tune: keep these weights and their BatchNorm statistics fixed: encoder (E1-E4) "
        "or backbone (the encoder and the MSRF sub-network: 93 % of the weights; only the "
        "shape stream, decoder and heads learn, and a step costs less)",
        flag="--freeze",
    )
    # --- optimisation
    epochs: int = _optim(
        125, opt.positive_int, "epochs (original: 125)", flag="--epochs", resume=True
    )
    max_minutes: float | None = _optim(
        None,
        opt.optional(opt.positive_float),
        "stop training after this many minutes (best epoch kept)",
        flag="--max-minutes",
        resume=True,
    )
    batch_size: int = _optim(
        4,
        opt.positive_int,
        "images per batch and device (original: 4)",
        flag="--batch-size",
        resume=True,
    )
    lr: float = _optim(1e-4, opt.positive_float, "Adam learning rate (original: 1e-4)", flag="--lr")
    schedule: str = _optim(
        "constant",
        opt.choice(SCHEDULES),
        "learning-rate schedule: constant (original) or cosine",
        flag="--schedule",
    )
    warmup_steps: int = _optim(
        0,
        opt.nonnegative_int,
        "raise the learning rate linearly over the first N optimizer steps (default 0; "
        "a cosine schedule then decays over the steps or --max-minutes, whichever ends first)",
        flag="--warmup-steps",
    )
    seed: int = _optim(42, opt.seed, "random seed (default 42)", flag="--seed")
    deterministic: bool = _optim(
        False,
        opt.boolean,
        "deterministic algorithms (with --seed: repeatable runs)",
        flag="--deterministic",
        resume=True,
    )
    # --- execution
    precision: str = _run(
        "auto",
        opt.choice(PRECISIONS),
        "auto (bf16-mixed on a GPU, 32 on a CPU), " + ", ".join(PRECISIONS[1:]),
        flag="--precision",
        resume=True,
    )
    devices: str = _run(
        "auto",
        opt.devices,
        "devices per node: auto, a count, or a list like 0,1",
        flag="--devices",
        resume=True,
    )
    strategy: str = _run(
        "auto", opt.text, "Lightning strategy: auto, ddp, ...", flag="--strategy", resume=True
    )
    num_nodes: int = _run(
        1,
        opt.positive_int,
        "machines (with torchrun or SLURM)",
        flag="--num-nodes",
        resume=True,
    )
    workers: int = _run(
        2, opt.nonnegative_int, "data-loader worker processes", flag="--workers", resume=True
    )
    compile: bool = _run(
        False,
        opt.boolean,
        "torch.compile the model (falls back to eager if unavailable)",
        flag="--compile",
        resume=True,
    )
    channels_last: bool = _run(
        True,
        opt.boolean,
        "channels-last memory layout (default); --no-channels-last keeps NCHW",
        flag="--channels-last",
        resume=True,
    )
    subpixel: bool = _run(
        True,
        opt.boolean,
        "DSDF up-exchanges as convolution + pixel shuffle (default; exact, "
        "MSRFNet(upsampling='subpixel')); --no-subpixel runs them as transposed convolutions "
        "(same function, slower on a CPU)",
        flag="--subpixel",
        resume=True,
    )
    precise_bn: str = _run(
        "auto",
        opt.choice(PRECISE_BN),
        "recompute BatchNorm statistics from training batches before validation: auto "
        "(default: while the running statistics cannot have converged), on, off (original); "
        "frozen (fine-tune default): keep the starting weights' statistics, BN in eval mode",
        flag="--precise-bn",
        resume=True,
    )
    # --- evaluation and output
    threshold: float = _output(
        0.5,
        opt.probability,
        "foreground = probability ≥ T in validation and, saved with the weights, inference",
        inference=True,
    )
    validate_first: bool = _output(
        False,
        opt.boolean,
        "validate before the first epoch too (epoch 0 in the log, history.csv and curves.png: "
        "where the run starts; on by default with --weights)",
        flag="--validate-first",
    )
    out: str = _output(
        "runs", opt.path_text, "folder for run directories (default: runs)", flag="--out"
    )
    name: str | None = _output(
        None,
        opt.optional(opt.run_name),
        "run directory name (default: msrf-<date>-<time>)",
        flag="--name",
    )
    extra: dict[str, Any] = _output(
        None, opt.mapping, "free-form values kept with the run", factory=dict
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(
        self, where: str | Path | None = None, fields: Iterable[str] | None = None
    ) -> "Config":
        """Check every field (or those in ``fields``) by its rule (:mod:`msrfnet.options`, the
        CLI's rules), converting where needed; raise :class:`MSRFError` naming the field (and
        ``where``, e.g. a file)."""
        prefix = f"{where}: " if where else ""
        fields = set(OPTIONS if fields is None else fields)
        for name, option in OPTIONS.items():
            if name not in fields or not hasattr(self, name):
                continue
            try:
                setattr(self, name, option.rule(getattr(self, name)))
            except ArgumentTypeError as e:
                raise MSRFError(f"{prefix}{name}: {e}") from None
        for low, high in (("canny_low", "canny_high"), ("edge_canny_low", "edge_canny_high")):
            lo, hi = getattr(self, low), getattr(self, high)
            if {low, high} <= fields and lo > hi:
                raise MSRFError(
                    f"{prefix}{low} {lo} is above {high} {hi}; "
                    "the low Canny threshold must not exceed the high one"
                )
        return self

    def save(self, path: str | Path) -> None:
        """Write as YAML, atomically: an interrupted save keeps the previous file whole."""
        from msrfnet.safe_output import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        """A config file, validated; raise :class:`MSRFError` naming the file when it is unreadable,
        not YAML, not a mapping, or holds a value that breaks a rule."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise MSRFError(f"{path}: cannot read ({e.strerror or e})") from e
        except UnicodeDecodeError as e:
            raise MSRFError(f"{path}: not a text file, so not a config") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or "syntax error"
            raise MSRFError(f"{path}: not valid YAML ({problem}{where})") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise MSRFError(f"{path}: not a config (a YAML {kind}, expected option: value lines)")
        return cls.from_dict(data).validate(path)


#: Each field's :class:`Option`, in the field order.
OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in dataclasses.fields(Config)}

#: The fields that inference reads from a checkpoint's config (checked when weights are read).
INFERENCE_FIELDS = tuple(name for name, o in OPTIONS.items() if o.inference)

#: What a resumed run (``msrf train --resume RUN``) may change: how it runs and for how long. The
#: rest would change the weights' shapes, the data or recipe it learns from, or would be silently
#: ignored (the optimizer's saved learning rate, the saved random state), so it is refused.
RESUME_CHANGEABLE = frozenset(name for name, o in OPTIONS.items() if o.resume)
