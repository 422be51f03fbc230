"""``Segmenter``: images as users hold them in, masks at their own size out.

The one inference path: ``msrf predict`` and ``msrf test`` call it too. Per image, exactly the
training pre-processing (spec §2.2): RGB uint8 (grey repeated, alpha dropped, 16-bit and float
stretched), Lanczos resize to the model size, [0, 1] scaling and the Canny map of the resized
image; the final head's probability is resized back to the image's H×W (bilinear) and thresholded.

Tiled (``tile`` / ``scale``, or weights trained at native scale): the image, resampled by
``scale`` if given, is predicted in overlapping windows blended with Gaussian weights
(:mod:`msrfnet.inference.tiling`) and the probabilities are resampled back to its H×W.

A *runner* does the network part: ``runner(images, canny)`` with uint8 B×3×S×S and B×1×S×S
arrays → float32 B×S×S probabilities (PyTorch, onnxruntime or an int8 package; see ``runners``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msrfnet.config import NORMALIZATIONS
from msrfnet.data.io import check_finite, read_image, rgb_uint8
from msrfnet.data.preprocess import model_inputs
from msrfnet.errors import MSRFError
from msrfnet.inference import runners
from msrfnet.inference.instances import (
    MIN_SIZE,
    SEED_DISTANCE,
    check_instance_options,
    find_objects,
)
from msrfnet.inference.runners import predict_probabilities, resolve_device, to_original_size
from msrfnet.inference.tiling import check_tiling, predict_tiled
from msrfnet.options import check_image_size, check_threshold

__all__ = ["Segmenter", "Segmentation", "as_rgb", "resolve_device"]

log = logging.getLogger("msrfnet")


@dataclass
class Segmentation:
    """One image's result, at the image's own size."""

    probability: np.ndarray  #: H×W float32, the final head's sigmoid
    mask: np.ndarray  #: H×W bool, probability ≥ threshold
    #: with ``instances``: H×W uint16 objects (0 = background; :func:`split_instances`)
    labels: np.ndarray | None = None
    #: with ``instances``: one row per object (:func:`~msrfnet.inference.instances.object_table`)
    objects: list[dict[str, Any]] | None = None


def as_rgb(image: Any, name: str = "image", normalize: str = "minmax") -> np.ndarray:
    """H×W×3 uint8 RGB from a path, a PIL image or a numpy array (H×W or H×W×C; uint8, uint16,
    float or bool), with the rules of :func:`msrfnet.data.io.read_image`; 16-bit and float
    pixels by ``normalize`` (:func:`msrfnet.data.io.to_uint8`, the checkpoint's rule)."""

    if isinstance(image, (str, Path)):
        return read_image(image, normalize=normalize)
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image
        image = np.asarray(
            image.convert("RGB") if image.mode in ("P", "PA", "CMYK", "YCbCr") else image
        )
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[2] in (1, 2):  # grey, grey + alpha
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or min(arr.shape[:2]) < 1:
        raise MSRFError(
            f"{name}: expected an H×W or H×W×C (C = 1, 3 or 4) image, got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MSRFError(f"{name}: unsupported pixel type {arr.dtype}")
    return rgb_uint8(check_finite(arr, name), normalize)


class Segmenter:
    """Segment images with a runner at the model's input size.

    >>> seg = Segmenter.from_pretrained()             # the shipped weights (or a run / file path)
    >>> out = seg(image)                              # numpy, PIL image or path → Segmentation
    >>> outs = seg([a, b, c], batch_size=8)           # a list → a list
    >>> seg(image, instances=True).labels             # touching nuclei as separate objects

    ``instances`` (here or per call) adds ``labels`` and ``objects`` to each result:
    :func:`~msrfnet.inference.instances.split_instances` with ``min_size`` and ``seed_distance``
    (defaults tuned for DSB nuclei at native resolution).
    """

    def __init__(
        self,
        runner,
        *,
        image_size: int,
        canny: tuple[float, float] = (10, 1000),
        threshold: float = 0.5,
        tta: bool = False,
        description: str = "",
        instances: bool = False,
        min_size: int | None = None,
        seed_distance: int | None = None,
        tile: int | None = None,
        overlap: float = 0.25,
        scale: float | None = None,
        normalize: str = "minmax",
    ):

        self.runner = runner
        self.image_size = check_image_size(image_size)
        self.canny = (float(canny[0]), float(canny[1]))
        self.threshold = check_threshold(threshold)
        self.tta = tta
        self.description = description or getattr(runner, "numerics", "")
        if normalize not in NORMALIZATIONS:
            raise MSRFError(f"normalize {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
        self.normalize = normalize  # 16-bit/float pixels to uint8, as in training
        self.set_tiling(tile, overlap, scale)
        self.instances = instances
        self.min_size, self.seed_distance = check_instance_options(
            MIN_SIZE if min_size is None else min_size,
            SEED_DISTANCE if seed_distance is None else seed_distance,
        )

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        weights: str | Path | None = None,
        *,
        onnx: str | Path | None = None,
        pt2: str | Path | None = None,
        device: str | None = "auto",
        exact: bool = False,
        image_size: int | None = None,
        prefer_runs: bool = False,
        **kwargs,
    ) -> "Segmenter":
        """The model the command line names: PyTorch ``weights`` (None: the shipped ones, or
        the newest run with ``prefer_runs``; a run folder, ``.safetensors``, ``.ckpt`` or a
        Hub-layout folder) on ``device``, or an exported ``onnx`` / ``pt2`` model
        (:func:`~msrfnet.inference.runners.open_runner`). Image size, Canny thresholds,
        threshold and normalisation come from the checkpoint or the export's metadata unless
        given. Weights trained at native scale (``msrf train --patch-size P [--scale S]``)
        predict tiled, with P × P tiles at the scale S they were trained at, unless ``tile`` /
        ``scale`` say otherwise; weights trained on resized images that are asked to tile log a
        note to choose ``scale``. The model file is ``.weights``, its config ``.config``."""
        runner, path, cfg = runners.open_runner(
            weights,
            onnx=onnx,
            pt2=pt2,
            image_size=image_size,
            exact=exact,
            device=device,
            prefer_runs=prefer_runs,
        )
        if onnx is None and pt2 is None and getattr(cfg, "patch_size", None):
            if kwargs.get("tile") is None:  # trained on crops at native scale: tiles
                kwargs["tile"] = image_size or cfg.patch_size
            if kwargs.get("scale") is None:
                kwargs["scale"] = getattr(cfg, "scale", None)
        elif onnx is None and pt2 is None and (kwargs.get("tile") or kwargs.get("scale")):
            log.info(
                f"note: these weights were trained on whole images resized to "
                f"{cfg.image_size}², not at native scale: choose --scale so that objects look "
                "as large as in training (docs/LARGE_IMAGES.md, Scale)"
            )
        if kwargs.get("threshold") is None:
            kwargs["threshold"] = getattr(cfg, "threshold", 0.5)
        seg = cls(
            runner,
            image_size=cfg.image_size,
            canny=(cfg.canny_low, cfg.canny_high),
            description=f"{Path(path).name}, {getattr(runner, 'numerics', '')}",
            normalize=kwargs.pop("normalize", None) or cfg.normalize,
            **kwargs,
        )
        seg.weights, seg.config = Path(path), cfg
        return seg

    @classmethod
    def from_pretrained(
        cls,
        weights: str | Path | None = None,
        *,
        device: str | None = "auto",
        exact: bool = False,
        image_size: int | None = None,
        **kwargs,
    ) -> "Segmenter":
        """PyTorch weights: None = the shipped ones, else a run folder, ``.safetensors``,
        ``.ckpt`` or a Hub-layout folder; ``exact`` keeps float32 on a CPU with native bfloat16
        (see ``TorchRunner``); native-scale weights tile by themselves (see :meth:`open`)."""
        return cls.open(weights, device=device, exact=exact, image_size=image_size, **kwargs)

    @classmethod
    def from_exported(
        cls, path: str | Path, *, image_size: int | None = None, **kwargs
    ) -> "Segmenter":
        """An ``msrf export`` file: ``.onnx`` (onnxruntime) or an int8 ``.pt2`` package."""
        path = Path(path)
        which = {"pt2": path} if path.suffix == ".pt2" else {"onnx": path}
        return cls.open(image_size=image_size, **which, **kwargs)

    # --- tiling -------------------------------------------------------------------------------
    def set_tiling(
        self, tile: int | None = None, overlap: float = 0.25, scale: float | None = None
    ) -> None:
        """Predict tiled (:mod:`msrfnet.inference.tiling`) with ``tile`` × ``tile`` windows
        overlapping by ``overlap`` of their side, after resampling each image by ``scale``
        (the probabilities come back at the image's size); ``tile`` None with a ``scale`` tiles
        at ``image_size``; both None: the resize protocol (the whole image resized to
        ``image_size``, the paper's)."""

        options = check_tiling(tile, overlap, scale, tile_name="tile")
        self.tile, self.overlap, self.scale = options["tile"], options["overlap"], options["scale"]
        fixed = getattr(self.runner, "size", None)  # an int8 package takes one input size
        if self.tiled and fixed is not None and self.tile_size != fixed:
            raise MSRFError(f"tile {self.tile_size}: this model takes {fixed}×{fixed} inputs only")

    @property
    def tiled(self) -> bool:
        return self.tile is not None or self.scale is not None

    @property
    def tile_size(self) -> int:
        return self.tile or self.image_size

    @property
    def tiling(self) -> dict[str, Any] | None:
        """{tile, overlap, scale} when predicting tiled, else None (the resize protocol)."""
        if not self.tiled:
            return None
        return {"tile": self.tile_size, "overlap": self.overlap, "scale": self.scale}

    def window_predictor(self, tta: bool | None = None):
        """``predict(images, canny)`` → probabilities at the model's size: the runner with
        ``tta`` (the argument :mod:`msrfnet.inference.tiling` calls per batch of windows)."""
        tta = self.tta if tta is None else tta
        return lambda images, canny: predict_probabilities(self.runner, images, canny, tta=tta)

    def model_probabilities(
        self, images: np.ndarray, canny: np.ndarray, *, tta: bool | None = None
    ) -> np.ndarray:
        """B×S×S probabilities of model inputs already at the model's size (uint8 B×3×S×S
        images and B×1×S×S Canny maps): the paper's model-resolution protocol (``msrf test``)."""
        return self.window_predictor(tta)(images, canny)

    def _tiled_probability(self, rgb: np.ndarray, tta: bool, batch_size: int) -> np.ndarray:

        return predict_tiled(
            rgb, self.window_predictor(tta), canny=self.canny, batch_size=batch_size, **self.tiling
        )

    # --- prediction -----------------------------------------------------------------------------
    def probabilities(
        self, rgbs: Sequence[np.ndarray], *, tta: bool | None = None, batch_size: int = 8
    ) -> list[np.ndarray]:
        """Probability maps (H×W float32, each at its image's size) of RGB uint8 images, one
        runner call for all of them (the caller chooses the batch); tiled (see
        :meth:`set_tiling`), one image at a time, ``batch_size`` tiles per runner call."""

        if self.tiled:
            tta = self.tta if tta is None else tta
            return [self._tiled_probability(rgb, tta, batch_size) for rgb in rgbs]
        images, canny = model_inputs(rgbs, self.image_size, *self.canny)
        probs = predict_probabilities(
            self.runner, images, canny, tta=self.tta if tta is None else tta
        )
        return [to_original_size(p, *rgb.shape[:2]) for rgb, p in zip(rgbs, probs)]

    def __call__(
        self,
        images,
        *,
        batch_size: int = 8,
        tta: bool | None = None,
        threshold: float | None = None,
        instances: bool | None = None,
    ):
        """A :class:`Segmentation` for one image, a list of them for a list or tuple."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if batch_size < 1:
            raise MSRFError(f"batch_size {batch_size}: must be at least 1")
        t = self.threshold if threshold is None else check_threshold(threshold)
        results: list[Segmentation] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            rgbs = [
                as_rgb(
                    x,
                    name=str(x) if isinstance(x, (str, Path)) else f"image {start + i}",
                    normalize=self.normalize,
                )
                for i, x in enumerate(chunk)
            ]
            for rgb, prob in zip(rgbs, self.probabilities(rgbs, tta=tta, batch_size=batch_size)):
                results.append(self.segmentation(rgb, prob, t, instances))
        return results[0] if single else results

    def segmentation(
        self, rgb: np.ndarray, prob: np.ndarray, threshold: float, instances: bool | None = None
    ) -> Segmentation:
        """The :class:`Segmentation` of an image's probability map (H×W, the image's size)."""

        result = Segmentation(prob, prob >= threshold)
        if self.instances if instances is None else instances:
            result.labels, result.objects = find_objects(
                prob, threshold, rgb, min_size=self.min_size, seed_distance=self.seed_distance
            )
        return result

    def __repr__(self) -> str:
        tiling = ""
        if self.tiled:
            tiling = f", tile={self.tile_size}, overlap={self.overlap}, scale={self.scale}"
        return (
            f"Segmenter({self.description}, image_size={self.image_size}, canny={self.canny}"
            f"{tiling})"
        )
