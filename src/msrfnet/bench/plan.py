"""The plan of ``msrf bench``: what to measure (:class:`BenchOptions`, checked when made) and
the device's defaults filled in (:class:`BenchPlan`, :func:`plan_bench`), before anything is
measured. :mod:`msrfnet.bench.run` runs a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msrfnet.accel.cpu import cpu_supports_bf16
from msrfnet.bench.timing import PathSpec, resolve_device
from msrfnet.errors import MSRFError
from msrfnet.options import check_image_size

__all__ = [
    "CUDA_DEFAULTS",
    "CPU_DEFAULTS",
    "DEFAULT_COMPILE_MODE",
    "COMPILE_MODES",
    "BenchOptions",
    "BenchPlan",
    "plan_bench",
]

CUDA_DEFAULTS = {"batch_size": 32, "warmup": 3, "steps": 20}
CPU_DEFAULTS = {"batch_size": 2, "warmup": 1, "steps": 2, "threads": 2}
DEFAULT_COMPILE_MODE = "default"  # max-autotune tunes every conv shape: many minutes for this model
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class BenchOptions:
    """What ``msrf bench`` measures, and how; ``None``: the device's default (``CUDA_DEFAULTS``,
    ``CPU_DEFAULTS``; see :func:`run_bench`). Checked when made (one line naming the option).

    ``compile_mode`` is ``torch.compile``'s mode (``"default"``, ``"reduce-overhead"`` = CUDA
    graphs, ``"max-autotune-no-cudagraphs"``…; default ``DEFAULT_COMPILE_MODE``);
    ``channels_last``, ``subpixel`` and ``amp`` (bf16 autocast where the device has it) are the
    optimized path's settings; ``baseline=False`` or ``inference=False`` skip those parts (their
    keys are then ``None``); ``compile_cpu`` compiles on the CPU too."""

    device: str | None = None
    batch_size: int | None = None
    image_size: int = 256
    steps: int | None = None
    compile: bool = True
    compile_mode: str | None = None
    channels_last: bool = True
    subpixel: bool = True
    amp: bool = True
    warmup: int | None = None
    infer_batch_size: int | None = None
    threads: int | None = None
    baseline: bool = True
    inference: bool = True
    compile_cpu: bool = False
    variant: str = "official"
    seed: int = 0

    def __post_init__(self) -> None:
        check_image_size(self.image_size, "msrf bench: --image-size")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise MSRFError(
                f"msrf bench: compile mode must be one of {', '.join(COMPILE_MODES)}, got "
                f"{self.compile_mode!r}"
            )
        if any(n is not None and n < 1 for n in (self.batch_size, self.steps)) or (
            self.infer_batch_size is not None and self.infer_batch_size < 1
        ):
            raise MSRFError("msrf bench: --batch-size and --steps must be at least 1")


@dataclass(frozen=True)
class BenchPlan:
    """:class:`BenchOptions` resolved for the device: the numbers the run uses."""

    options: BenchOptions
    device: torch.device
    batch: int
    infer_batch: int
    steps_train: int
    steps_infer: int
    warmup: int
    threads: int | None  # None: leave torch's setting (CUDA)
    compile_mode: str
    baseline_spec: PathSpec
    optimized_spec: PathSpec

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _specs(options: BenchOptions, device: torch.device, compile_mode: str) -> tuple[PathSpec, ...]:
    """The baseline and the optimized path (see the module docstring)."""
    cuda = device.type == "cuda"
    bf16 = options.amp and (
        cuda and torch.cuda.is_bf16_supported() or not cuda and cpu_supports_bf16()
    )
    base = PathSpec("baseline")
    opt = PathSpec(
        "optimized",
        memory_efficient=True,
        amp_dtype=torch.bfloat16 if bf16 else None,
        channels_last=options.channels_last,
        subpixel=options.subpixel,
        compile=options.compile and (cuda or options.compile_cpu),
        compile_mode=compile_mode,
        fused_adam=cuda,
        cudnn_benchmark=cuda,
        cpu_inference_helper=not cuda,
    )
    return base, opt


def plan_bench(options: BenchOptions) -> BenchPlan:
    """The device's defaults filled in (see :func:`run_bench`); measures nothing.

    Raises:
        MSRFError: a CUDA device asked for where PyTorch sees none, or an unknown device.
    """
    dev = resolve_device(options.device)
    cuda = dev.type == "cuda"
    d = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    batch = options.batch_size or d["batch_size"]
    steps = options.steps
    warm = options.warmup if options.warmup is not None else d["warmup"]
    compile_mode = options.compile_mode or DEFAULT_COMPILE_MODE
    base, opt = _specs(options, dev, compile_mode)
    return BenchPlan(
        options=options,
        device=dev,
        batch=batch,
        infer_batch=options.infer_batch_size or (batch if cuda else 1),
        steps_train=steps or d["steps"],
        steps_infer=(steps or d["steps"]) if cuda else max(steps or 3, 3),
        warmup=max(warm, 1) if cuda else warm,
        # 2 threads (the documented CPU figure), or fewer where torch is already limited to fewer
        threads=None
        if cuda
        else (options.threads or min(CPU_DEFAULTS["threads"], torch.get_num_threads())),
        compile_mode=compile_mode,
        baseline_spec=base,
        optimized_spec=opt,
    )
