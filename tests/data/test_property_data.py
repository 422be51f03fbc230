"""Property tests of the data path (files → cache → ``MSRFDataset``) with Hypothesis: random sizes,
uint8/uint16 grey/RGB/RGBA images, 0/255 and 0/1 masks of several patterns.

For every generated data set:

* reading is right, checked against an independent conversion: uint8 pixels kept, alpha dropped,
  grey repeated, 16-bit stretched from its own min–max to 0–255; masks read back as written;
* items are what the model expects: ``image`` uint8 3×S×S, ``canny``/``mask``/``edge`` uint8
  1×S×S with values in {0, 1}, ``index`` the position, ``source`` the original H×W;
* an empty mask gives an all-0 target and no edges, a full mask an all-1 target and no edges;
* pre-processing is deterministic: a second cache built elsewhere is byte-identical, it equals
  ``preprocess_pair`` of the files, and the same item twice is the same tensors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from msrfnet.data import MSRFDataset, load_or_build_cache, preprocess_pair, read_image, read_mask

DTYPES = ("uint8", "uint16")
LAYOUTS = ("grey", "rgb", "rgba")
MASK_VALUES = ("0/255", "0/1")
PATTERNS = ("random", "rect", "empty", "full")

pair_spec = st.fixed_dictionaries(
    {
        "h": st.integers(8, 80),
        "w": st.integers(8, 80),
        "dtype": st.sampled_from(DTYPES),
        "layout": st.sampled_from(LAYOUTS),
        "mask_values": st.sampled_from(MASK_VALUES),
        "pattern": st.sampled_from(PATTERNS),
        "seed": st.integers(0, 2**32 - 1),
    }
)


def _make_pair(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image array as stored: H×W, H×W×3 or H×W×4 of the dtype; boolean foreground H×W)."""
    rng = np.random.default_rng(spec["seed"])
    h, w = spec["h"], spec["w"]
    top = 255 if spec["dtype"] == "uint8" else int(rng.choice([4095, 65535]))  # 12-bit cameras too
    channels = {"grey": (), "rgb": (3,), "rgba": (4,)}[spec["layout"]]
    image = rng.integers(0, top + 1, (h, w, *channels)).astype(spec["dtype"])
    pattern = spec["pattern"]
    if pattern == "random":
        fg = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    elif pattern == "rect":
        fg = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        fg[y0 : y0 + rng.integers(1, h - y0 + 1), x0 : x0 + rng.integers(1, w - x0 + 1)] = True
    else:
        fg = np.full((h, w), pattern == "full")
    return image, fg


def _write_image(path: Path, image: np.ndarray) -> None:
    if image.dtype == np.uint16 and image.ndim == 3:  # Pillow cannot write 16-bit colour
        bgr = image[:, :, [2, 1, 0, 3][: image.shape[2]]]
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
        assert ok
        buf.tofile(str(path))
    else:
        Image.fromarray(image).save(path)


def _expected_rgb(image: np.ndarray) -> np.ndarray:
    """The documented reading rule, computed independently of msrfnet.data.io."""
    rgb = image[:, :, :3] if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype == np.uint8:
        return rgb
    lo, hi = float(rgb.min()), float(rgb.max())  # alpha does not count
    if hi <= lo:
        return np.zeros(rgb.shape, np.uint8)
    return np.rint((rgb.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def _write_dataset(root: Path, specs: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for kind in ("images", "masks"):
        (root / "train" / kind).mkdir(parents=True)
    for i, spec in enumerate(specs):
        image, fg = _make_pair(spec)
        _write_image(root / "train" / "images" / f"p{i:02d}.png", image)
        on = 255 if spec["mask_values"] == "0/255" else 1
        Image.fromarray(np.where(fg, np.uint8(on), np.uint8(0))).save(
            root / "train" / "masks" / f"p{i:02d}.png"
        )
        pairs.append((image, fg))
    return pairs


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(pair_spec, min_size=1, max_size=3), size=st.sampled_from([8, 16, 24]))
def test_dataset_items_from_random_files(specs: list[dict], size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        written = _write_dataset(root, specs)
        files = sorted((root / "train" / "images").iterdir())

        rgbs = []
        for (image, fg), path in zip(written, files):
            rgb = read_image(path)
            # exact for uint8; the stretch of 16-bit may round a .5 tie the other way
            tolerance = 0 if image.dtype == np.uint8 else 1
            assert rgb.dtype == np.uint8 and rgb.shape == (*image.shape[:2], 3)
            assert np.abs(rgb.astype(int) - _expected_rgb(image)).max() <= tolerance
            assert np.array_equal(read_mask(root / "train" / "masks" / path.name), fg)
            rgbs.append(rgb)

        cache = load_or_build_cache(root, "train", size, cache_dir=Path(tmp) / "c1")
        again = load_or_build_cache(root, "train", size, cache_dir=Path(tmp) / "c2")
        assert cache.path != again.path
        assert np.array_equal(cache.images, again.images) and np.array_equal(
            cache.masks, again.masks
        )
        assert cache.images.shape == (len(specs), size, size, 3) and cache.images.dtype == np.uint8
        assert cache.masks.shape == (len(specs), size, size) and cache.masks.dtype == np.uint8

        dataset = MSRFDataset(cache)
        assert len(dataset) == len(specs)
        for i, ((_, fg), rgb, spec) in enumerate(zip(written, rgbs, specs)):
            ref_image, ref_grey = preprocess_pair(rgb, fg, size)
            assert np.array_equal(cache.images[i], ref_image) and np.array_equal(
                cache.masks[i], ref_grey
            )
            assert (dataset.source(i).height, dataset.source(i).width) == (spec["h"], spec["w"])

            item = dataset[i]
            assert item["index"] == i
            assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, size, size)
            assert torch.equal(
                item["image"], torch.from_numpy(np.array(ref_image)).permute(2, 0, 1)
            )
            for key in ("canny", "mask", "edge"):
                t = item[key]
                assert t.dtype == torch.uint8 and t.shape == (1, size, size), key
                assert set(t.unique().tolist()) <= {0, 1}, key
            if not fg.any():
                assert not item["mask"].any() and not item["edge"].any()
            if fg.all():
                assert item["mask"].all() and not item["edge"].any()

            twice = dataset[i]
            assert all(torch.equal(item[k], twice[k]) for k in ("image", "canny", "mask", "edge"))
