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
from msrfnet.data.resample import scaled_size
from msrfnet.errors import MSRFError
from msrfnet.inference import runners
from msrfnet.inference.instances import find_objects
from msrfnet.inference.runners import predict_probabilities, resolve_device, to_original_size
from msrfnet.inference.tiling import predict_tiled, tile_starts
from msrfnet.option_groups import DEFAULT_OVERLAP, ModelSource, Objects, Tiling
from msrfnet.options import (
    check,
    check_image_size,
    check_inference_memory,
    check_threshold,
    positive_int,
)

__all__ = ["Segmenter", "Segmentation", "UnreadableInput", "as_rgb", "resolve_device"]

log = logging.getLogger("msrfnet")


class UnreadableInput(MSRFError):
    """An input image (a file, a plane of a stack) that cannot be read: corrupt, truncated, NaN
    pixels, unreadable, a symbolic link that loops. ``msrf predict`` names it and skips it
    unless ``--strict`` (or it is the only input); the one type for that rule."""


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
        if Path(image).is_dir():
            raise MSRFError(
                f"{image}: is a folder, not an image; pass an image file, or a list of them "
                "(e.g. sorted(Path(folder).glob('*.png'))), or use msrf predict for a folder"
            )
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
        normalize: str = "minmax",
        instances: bool = False,
        tiling: Tiling | None = None,
        objects: Objects | None = None,
        **options: Any,
    ):
        """``tiling`` (:class:`~msrfnet.option_groups.Tiling`) and ``objects``
        (:class:`~msrfnet.option_groups.Objects`) may also be given field by field: ``tile``,
        ``overlap``, ``scale`` and ``min_size``, ``seed_distance`` (``None``: the default), by
        the same rules. An ``image_size`` (the tile's, when tiling) this machine cannot hold is
        refused before anything runs (:func:`~msrfnet.options.check_inference_memory`)."""

        self.runner = runner
        self.image_size = check_image_size(image_size)
        self.canny = (float(canny[0]), float(canny[1]))
        self.threshold = check_threshold(threshold)
        self.tta = tta
        self.description = description or getattr(runner, "numerics", "")
        if normalize not in NORMALIZATIONS:
            raise MSRFError(f"normalize {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
        self.normalize = normalize  # 16-bit/float pixels to uint8, as in training
        self.set_tiling(_group(Tiling, tiling, "tiling", options))
        objects = _group(Objects, objects, "objects", options)
        if options:
            raise TypeError(
                f"Segmenter() got an unexpected keyword argument {next(iter(options))!r}"
            )
        self.instances = instances
        self.min_size, self.seed_distance = objects.min_size, objects.seed_distance

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
        model: ModelSource | None = None,
        **kwargs,
    ) -> "Segmenter":
        """The model the command line names: PyTorch ``weights`` (None: the shipped ones, or
        the newest run with ``prefer_runs``; a run folder, ``.safetensors``, ``.ckpt`` or a
        Hub-layout folder) on ``device``, or an exported ``onnx`` / ``pt2`` model
        (:func:`~msrfnet.inference.runners.open_runner`); or all of these, with ``threshold``
        and ``tta``, as one ``model`` (:class:`~msrfnet.option_groups.ModelSource`). Image size,
        Canny thresholds, threshold and normalisation come from the checkpoint or the export's
        metadata unless given. Weights trained at native scale (``msrf train --patch-size P
        [--scale S]``) predict tiled, with P × P tiles at the scale S they were trained at,
        unless ``tile`` / ``scale`` (or ``tiling``) say otherwise; weights trained on resized
        images that are asked to tile log a note to choose ``scale``. A given ``image_size`` (or
        ``tile``) this machine cannot hold is refused before the model loads. The model file is
        ``.weights``, its config ``.config``."""
        if model is not None:
            if any(x is not None for x in (weights, onnx, pt2, image_size)):
                raise MSRFError("pass model=ModelSource(...) or the model's parts, not both")
            weights, onnx, pt2, image_size = model.weights, model.onnx, model.pt2, model.image_size
            device, exact = model.device, model.exact
            kwargs = {"threshold": model.threshold, "tta": model.tta, **kwargs}
        tiling = _group(Tiling, kwargs.pop("tiling", None), "tiling", kwargs)  # checked here
        kwargs.update(tiling.as_dict())
        if kwargs["tile"] is not None or image_size is not None:
            size, what = (kwargs["tile"], "tile") if kwargs["tile"] else (image_size, "image_size")
            check_inference_memory(size, 1, what)  # before the model loads
        runner, path, cfg = runners.open_runner(
            weights,
            onnx=onnx,
            pt2=pt2,
            image_size=image_size,
            exact=exact,
            device=device,
            prefer_runs=prefer_runs,
        )
        _native_scale_tiling(kwargs, cfg, image_size, exported=onnx is not None or pt2 is not None)
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
        self,
        tile: int | Tiling | None = None,
        overlap: float = DEFAULT_OVERLAP,
        scale: float | None = None,
    ) -> None:
        """Predict tiled (:mod:`msrfnet.inference.tiling`) with ``tile`` × ``tile`` windows
        overlapping by ``overlap`` of their side, after resampling each image by ``scale``
        (the probabilities come back at the image's size); ``tile`` None with a ``scale`` tiles
        at ``image_size``; both None: the resize protocol (the whole image resized to
        ``image_size``, the paper's). A :class:`~msrfnet.option_groups.Tiling` may stand for
        the three. Checked first (rules, the model's fixed input size, memory): a refused
        tiling leaves the Segmenter as it was."""

        group = tile if isinstance(tile, Tiling) else Tiling(tile, overlap, scale)
        size = (group.tile or self.image_size) if group.asked else self.image_size
        fixed = getattr(self.runner, "size", None)  # an int8 package takes one input size
        if group.asked and fixed is not None and size != fixed:
            raise MSRFError(f"tile {size}: this model takes {fixed}×{fixed} inputs only")
        self._check_memory(size, 1, "tile" if group.tile else "image_size")
        self.tile, self.overlap, self.scale = group.tile, group.overlap, group.scale

    def check_memory(self, batch: int = 1) -> float:
        """Refuse ``batch`` model inputs at once (the model's input size, or the window's when
        tiled) that this machine cannot hold (:func:`~msrfnet.options.check_inference_memory`,
        on the runner's device); returns the estimate in GiB."""
        size = self.tile_size if self.tiled else self.image_size
        return self._check_memory(size, batch, "tile" if self.tile else "image_size")

    def _check_memory(self, size: int, batch: int, what: str) -> float:
        return check_inference_memory(size, batch, what, getattr(self.runner, "device", None))

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
        """One image's tiled probabilities; at most ``batch_size`` windows of a row per call."""
        width = max(scaled_size(*rgb.shape[:2], self.scale)[1], self.tile_size)
        self.check_memory(min(batch_size, len(tile_starts(width, self.tile_size, self.overlap))))
        return predict_tiled(
            rgb, self.window_predictor(tta), canny=self.canny, batch_size=batch_size, **self.tiling
        )

    # --- prediction -----------------------------------------------------------------------------
    def probabilities(
        self, rgbs: Sequence[np.ndarray], *, tta: bool | None = None, batch_size: int = 8
    ) -> list[np.ndarray]:
        """Probability maps (H×W float32, each at its image's size) of RGB uint8 images, one
        runner call for all of them (the caller chooses the batch); tiled (see
        :meth:`set_tiling`), one image at a time, ``batch_size`` tiles per runner call. Inputs
        this machine cannot hold are refused before the call (:meth:`check_memory`)."""

        batch_size = check(positive_int, batch_size, f"batch_size {batch_size}")
        if self.tiled:
            tta = self.tta if tta is None else tta
            return [self._tiled_probability(rgb, tta, batch_size) for rgb in rgbs]
        self.check_memory(max(1, len(rgbs)))
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
        batch_size = check(positive_int, batch_size, f"batch_size {batch_size}")
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


def _group(kind: type, group: Any, name: str, options: dict[str, Any]) -> Any:
    """The ``kind`` option group (:class:`Tiling`, :class:`Objects`): ``group`` itself, or one
    made of its fields taken out of ``options`` (``None`` values: the defaults)."""
    fields = [f for f in kind.__dataclass_fields__ if f in options]
    given = {f: options.pop(f) for f in fields}
    if group is None:
        return kind(**{f: v for f, v in given.items() if v is not None})
    if given:
        raise MSRFError(f"{', '.join(given)}: give them in {name}= or on their own, not both")
    if not isinstance(group, kind):
        raise MSRFError(f"{name}: expected a {kind.__name__}, got {type(group).__name__}")
    return group


def _native_scale_tiling(kwargs: dict[str, Any], cfg, image_size, *, exported: bool) -> None:
    """Weights trained on crops at native scale tile by themselves (at their patch size and
    scale, unless ``tile`` / ``scale`` are given in ``kwargs``); weights trained on resized
    images asked to tile log a note about the scale."""
    if not exported and getattr(cfg, "patch_size", None):
        if kwargs.get("tile") is None:
            kwargs["tile"] = image_size or cfg.patch_size
        if kwargs.get("scale") is None:
            kwargs["scale"] = getattr(cfg, "scale", None)
    elif not exported and (kwargs.get("tile") or kwargs.get("scale")):
        log.info(
            f"note: these weights were trained on whole images resized to "
            f"{cfg.image_size}², not at native scale: choose --scale so that objects look "
            "as large as in training (docs/LARGE_IMAGES.md, Scale)"
        )
