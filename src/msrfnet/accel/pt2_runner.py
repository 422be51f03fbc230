"""Loading and running an int8 AOTInductor package of ``msrf export --int8 --out X.pt2``
(:mod:`msrfnet.export.pt2_int8` writes it): :class:`Pt2Runner`, behind ``msrf predict/test --pt2``.

Kept apart from the export so that running a package needs neither torchao nor the quantizer, and
so that the rules a package and its runner share (its format tag, its contiguous NCHW inputs) live
in one place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from msrfnet.accel.cpu import flush_denormals
from msrfnet.errors import MSRFError, first_line
from msrfnet.model.msrfnet import scale_pixels

__all__ = ["PT2_FORMAT", "contiguous_nchw", "Pt2Runner"]

PT2_FORMAT = "msrfnet-int8-aoti"
# the instruction sets inductor compiles for (AOTI_CPU_ISA in a package's metadata, e.g. "AVX512
# AVX512_VNNI"), and how to ask whether this CPU has them; AVX512 implies AVX2
_ISA_CHECKS = {
    "AVX2": "_is_avx2_supported",
    "AVX512": "_is_avx512_supported",
    "AVX512_VNNI": "_is_vnni_supported",
    "AMX_TILE": "_is_amx_tile_supported",
}


def _missing_isa(built: str) -> list[str]:
    """The features of ``built`` (AOTI_CPU_ISA) this CPU lacks; unknown names are not checked."""
    return [
        f
        for f in built.split()
        if f in _ISA_CHECKS and not getattr(torch.cpu, _ISA_CHECKS[f], lambda: True)()
    ]


def contiguous_nchw(images: np.ndarray, canny: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # Contiguous NCHW float32, always: an AOTInductor package is specialised to its example's
    # strides and does not check them when called. A channels-last example (a transposed numpy
    # view) once gave a package that agreed with its graph on the example and on 61–97 % of the
    # pixels of any other image.
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).contiguous()
    c = torch.from_numpy(np.ascontiguousarray(canny, dtype=np.float32)).contiguous()
    return x, c


class Pt2Runner:
    """The :class:`~msrfnet.inference.runners.TorchRunner` contract (uint8 images and Canny maps in,
    float32 B×S×S probabilities out) for an :func:`export_int8_pt2` package, one image at a time
    (the package is compiled for batch 1)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise MSRFError(f"{path}: no such .pt2 package")
        try:
            self.package = torch._inductor.aoti_load_package(str(path))
            self.metadata = dict(self.package.get_metadata())
        except (
            Exception
        ) as e:  # a zip that is not an AOTInductor package, a torch that cannot read it
            first = first_line(e)
            raise MSRFError(
                f"{path}: not a loadable AOTInductor package ({type(e).__name__}: {first})"
            ) from e
        if self.metadata.get("format") != PT2_FORMAT:
            raise MSRFError(
                f"{path}: not an msrf export --int8 package (format "
                f"{self.metadata.get('format')!r})"
            )
        built = self.metadata.get("AOTI_CPU_ISA", "")
        missing = _missing_isa(built)
        if missing:  # its kernels would stop the process on an illegal instruction
            raise MSRFError(
                f"{path}: compiled for CPUs with {built}; this one lacks {' '.join(missing)}. "
                "Run msrf export --int8 --out X.pt2 on this machine"
            )
        self.size = int(self.metadata["image_size"])
        self.numerics = f"int8 (torchao + AOTInductor, {built or 'CPU'})"

    def __call__(self, images: np.ndarray, canny: np.ndarray) -> np.ndarray:

        if images.shape[-2:] != (self.size, self.size):
            raise MSRFError(
                f"this .pt2 package takes {self.size}×{self.size} images, got "
                f"{images.shape[-2]}×{images.shape[-1]}"
            )
        x, c = contiguous_nchw(scale_pixels(images), canny)
        with flush_denormals(), torch.no_grad():
            logits = [self.package(x[i : i + 1], c[i : i + 1]) for i in range(len(x))]
        return torch.sigmoid(torch.cat(logits)[:, 0]).numpy()
