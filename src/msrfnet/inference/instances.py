"""Objects from a probability map: touching nuclei split into a label image, and a table of them.

MSRF-Net predicts one foreground probability per pixel; nuclei that touch come out as one blob.
:func:`split_instances` separates them the way the field does without a second network: the
Euclidean distance transform of the mask peaks near each object's centre, those peaks (at least
``seed_distance`` pixels apart) seed a watershed that floods the mask, and the basins become the
objects. :func:`object_table` measures each object (scikit-image ``regionprops``) for a CSV or JSON.

Defaults suit nuclei at the native resolution of the 2018 Data Science Bowl images (median nucleus
about 340 px, radius ~10 px; 5 % are under 40 px): ``MIN_SIZE`` and ``SEED_DISTANCE``, defined
with their rules in :class:`msrfnet.option_groups.Objects`. For larger objects (cells, polyps,
lesions) raise both, roughly ``seed_distance`` ≈ half the smallest object radius you want kept
apart, ``min_size`` ≈ the area of the smallest object you care about.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from msrfnet.errors import MSRFError
from msrfnet.option_groups import MIN_SIZE, SEED_DISTANCE, Objects
from msrfnet.options import check_threshold

__all__ = [
    "SURFACES",
    "split_instances",
    "object_table",
    "find_objects",
    "labels_tiff",
    "objects_csv",
]

#: What the watershed floods: the negated distance transform (shape: splits at necks) or the
#: negated probability (the network's own valleys between objects).
SURFACES = ("distance", "probability")
MAX_LABELS = int(np.iinfo(np.uint16).max)
#: The columns of :func:`object_table` rows, in order.
OBJECT_COLUMNS = (
    "label",
    "area",
    "centroid_row",
    "centroid_col",
    "bbox_top",
    "bbox_left",
    "bbox_bottom",
    "bbox_right",
    "mean_intensity",
    "eccentricity",
    "solidity",
)


def _check_map(probability: Any, name: str) -> np.ndarray:
    arr = np.asarray(probability)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise MSRFError(f"{name}: expected an H×W map, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise MSRFError(f"{name}: unsupported value type {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise MSRFError(f"{name}: NaN or infinite values")
    return arr


def split_instances(
    probability: Any,
    threshold: float = 0.5,
    *,
    min_size: int = MIN_SIZE,
    seed_distance: int = SEED_DISTANCE,
    surface: str = "distance",
) -> np.ndarray:
    """A uint16 label image (0 = background, objects 1..N consecutive) of ``probability ≥
    threshold``, touching objects separated by a seeded watershed.

    Args:
        probability: H×W map in [0, 1] (or a boolean mask).
        threshold: foreground cut-off, as for the mask.
        min_size: objects under this many pixels are removed (after splitting).
        seed_distance: seeds (distance-transform peaks) lie at least this many pixels apart.
        surface: ``"distance"`` (default) or ``"probability"``: the landscape the seeds flood.

    Every connected blob gets at least one seed, so nothing of the mask is lost except objects
    under ``min_size``. Raises :class:`MSRFError` for a bad argument or more than 65,535 objects.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import relabel_sequential, watershed

    prob = _check_map(probability, "probability")
    check_threshold(threshold)
    Objects(min_size, seed_distance)  # their rules: min_size ≥ 0, seed_distance ≥ 1
    if surface not in SURFACES:
        raise MSRFError(f"surface {surface!r}: choose one of {', '.join(SURFACES)}")
    mask = prob >= threshold
    if not mask.any():
        return np.zeros(mask.shape, np.uint16)
    blobs, n_blobs = ndi.label(mask)
    dist = ndi.distance_transform_edt(mask)
    # A light blur stops the one-pixel ripples of a digitised boundary from becoming extra peaks.
    landscape = ndi.gaussian_filter(dist, sigma=1.0) * mask
    peaks = peak_local_max(
        landscape, min_distance=int(seed_distance), labels=blobs, exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    seeded = np.zeros(n_blobs + 1, bool)
    seeded[blobs[tuple(peaks.T)]] = True
    unseeded = np.flatnonzero(~seeded[1:]) + 1  # blobs without a peak (flat, tiny): seed each one
    if len(unseeded):
        where = ndi.maximum_position(dist, blobs, unseeded)
        rows, cols = np.array(where, dtype=np.intp).reshape(-1, 2).T
        markers[rows, cols] = len(peaks) + np.arange(1, len(unseeded) + 1)
    flood = -dist if surface == "distance" else -prob
    labels = watershed(flood, markers, mask=mask)
    if min_size > 1:
        areas = np.bincount(labels.ravel())
        small = areas < int(min_size)
        small[0] = False
        labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    if labels.max() > MAX_LABELS:
        raise MSRFError(
            f"{int(labels.max())} objects: more than a uint16 label image holds "
            f"({MAX_LABELS}); raise min_size or seed_distance, or split the image"
        )
    return labels.astype(np.uint16)


def find_objects(
    probability: Any,
    threshold: float,
    intensity: Any = None,
    *,
    min_size: int = MIN_SIZE,
    seed_distance: int = SEED_DISTANCE,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(labels, object rows): :func:`split_instances` then :func:`object_table` — the objects of
    ``msrf predict --instances`` and ``Segmenter(instances=True)``."""
    labels = split_instances(probability, threshold, min_size=min_size, seed_distance=seed_distance)
    return labels, object_table(labels, intensity)


def object_table(labels: Any, intensity: Any = None) -> list[dict[str, Any]]:
    """One row per object of a label image: ``label``, ``area`` (pixels), ``centroid_row``,
    ``centroid_col``, bounding box (``bbox_top``, ``bbox_left``, ``bbox_bottom``, ``bbox_right``;
    bottom/right exclusive), ``mean_intensity`` (of ``intensity``, an H×W map or an RGB image
    averaged over its channels; None without one), ``eccentricity`` (0 = circle) and ``solidity``
    (area / convex hull area). Plain Python numbers, ready for JSON or ``csv.DictWriter``."""
    from skimage.measure import regionprops

    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise MSRFError(f"labels: expected an H×W integer label image, got {lab.dtype} {lab.shape}")
    grey = None
    if intensity is not None:
        grey = np.asarray(intensity, dtype=np.float64)
        if grey.ndim == 3:
            grey = grey.mean(axis=2)
        if grey.shape != lab.shape:
            raise MSRFError(f"intensity: shape {grey.shape} differs from the labels' {lab.shape}")
    rows = []
    for region in regionprops(lab, intensity_image=grey):
        top, left, bottom, right = region.bbox
        cy, cx = region.centroid
        rows.append(
            {
                "label": int(region.label),
                "area": int(region.area),
                "centroid_row": round(float(cy), 2),
                "centroid_col": round(float(cx), 2),
                "bbox_top": int(top),
                "bbox_left": int(left),
                "bbox_bottom": int(bottom),
                "bbox_right": int(right),
                "mean_intensity": None if grey is None else round(float(region.intensity_mean), 4),
                "eccentricity": round(float(region.eccentricity), 4),
                "solidity": round(float(region.solidity), 4),
            }
        )
    return rows


def labels_tiff(labels: Any) -> bytes:
    """A uint16 label image (H×W, or P×H×W written as P pages) as TIFF bytes (zlib, lossless),
    for :mod:`msrfnet.safe_output`; read back with ``tifffile.imread``."""
    import io

    import tifffile

    arr = np.asarray(labels)
    if arr.dtype != np.uint16 or arr.ndim not in (2, 3):
        raise MSRFError(f"labels: expected uint16 H×W or P×H×W, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, compression="zlib", photometric="minisblack")
    return buf.getvalue()


def objects_csv(rows: list[dict[str, Any]], first: dict[str, Any] | None = None) -> str:
    """:func:`object_table` rows as CSV text (header always written, even with no object);
    ``first`` adds leading constant columns (e.g. the plane of a stack)."""
    import csv
    import io

    first = first or {}
    columns = [*first, *OBJECT_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**first, **{k: "" if v is None else v for k, v in row.items()}})
    return buf.getvalue()
