"""What ``msrf train`` checks against this machine before a run folder is created: ``--devices``
against the GPUs or CPU cores there are, and the training step's activation memory against the GPU
memory or the RAM this process can get (:func:`msrfnet.options.available_ram`)."""

from __future__ import annotations

import os

from msrfnet.errors import MSRFError
from msrfnet.options import available_ram, devices

__all__ = ["GIB_PER_256_IMAGE", "check_devices", "training_memory_gib", "check_training_memory"]

#: Activation memory autograd keeps per training image at 256², by bytes per value of the
#: precision: 0.378 GiB in bf16 autocast (docs/PERFORMANCE.md, "Training memory"), 0.737 GiB in
#: float32 (the same measurement, ``bench_timing.saved_activation_gib`` at 64² scaled by 16).
GIB_PER_256_IMAGE = {2: 0.38, 4: 0.74, 8: 1.48}


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_devices(spec: str) -> int:
    """Refuse ``--devices`` above what this machine has; returns the number of local processes.

    With a GPU, a count or index must exist among ``torch.cuda.device_count()``; without one,
    Lightning runs one process per device on the CPU, so a count is bounded by the CPU cores.
    """
    import torch

    spec = devices(spec)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return max(1, gpus)
    if spec == "-1" and not gpus:
        raise MSRFError("--devices -1 (all GPUs): this machine has none; on the CPU give a count")
    if spec == "-1":
        return gpus
    if "," in spec:
        index = [int(s) for s in spec.split(",")]
        if not gpus:
            raise MSRFError(
                f"--devices {spec}: device indices name GPUs, and this machine has "
                "none (on the CPU give a count, e.g. --devices 1)"
            )
        if max(index) >= gpus:
            raise MSRFError(
                f"--devices {spec}: this machine has {gpus} GPU(s), indices 0 to {gpus - 1}"
            )
        return len(index)
    n = int(spec)
    have, what = (gpus, "GPU(s)") if gpus else (_cpu_count(), "CPU core(s) and no GPU")
    if n > have:
        raise MSRFError(f"--devices {n}: this machine has {have} {what}")
    return n


def training_memory_gib(size: int, batch: int, precision: str) -> float:
    """Activation memory of one training step on one device: :data:`GIB_PER_256_IMAGE` scaled by
    pixels and batch size (the weights and Adam's state, ~0.3 GiB, come on top)."""
    width = 8 if precision.startswith("64") else 4 if precision.startswith("32") else 2
    return GIB_PER_256_IMAGE[width] * (size / 256) ** 2 * batch


def check_training_memory(
    size: int, batch: int, precision: str, processes: int = 1, strategy: str = "auto"
) -> float:
    """Refuse an ``--image-size``/``--batch-size`` whose training needs more memory than this
    machine has (per GPU, or the RAM shared by ``processes`` CPU processes); returns the
    estimate."""
    import torch

    need = training_memory_gib(size, batch, precision)
    per = (
        f"about {need:.2f} GiB of activations per step ({batch} image(s) of {size}², "
        f"precision {precision})"
    )
    if torch.cuda.is_available():
        if "fork" in strategy or "notebook" in strategy:
            return need  # querying the GPU here would initialise CUDA before the fork
        gpus = range(torch.cuda.device_count())
        have = min(torch.cuda.get_device_properties(i).total_memory for i in gpus)
        where, total = "of GPU memory", need
    else:
        have, where = available_ram()
        total = need * processes
        per += f" × {processes} processes" if processes > 1 else ""
    if total * 2**30 > have:
        raise MSRFError(
            f"--image-size {size}: training needs {per}, more than the "
            f"{have / 2**30:.1f} GiB {where}; lower --image-size or --batch-size"
        )
    return need
