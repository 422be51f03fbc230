"""Tiled prediction (msrfnet.inference.tiling): windows cover the image, blending weights sum
correctly to the borders and corners, seams are invisible, one window equals the whole-image
prediction, and a TIFF read and written band by band (memory-mapped or decoded) equals the
in-memory result."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from _logs import said
from _model_helpers import make_weights, use_runner

from msrfnet.data import read_image, sample_root
from msrfnet.data.resample import rescale, rescale_rows, scaled_size
from msrfnet.errors import MSRFError
from msrfnet.inference.predict import predict
from msrfnet.inference.segmenter import Segmenter
from msrfnet.inference.tiff_rows import TiffRows, open_tiff_rows, predict_tiff
from msrfnet.inference.tiling import (
    ArrayRows,
    gaussian_weight,
    iter_blended_rows,
    predict_tiled,
    tile_starts,
)
from msrfnet.option_groups import Outputs, Tiling


def constant(value: float = 1.0):
    def run(images, canny):
        return np.full((len(images), images.shape[2], images.shape[3]), value, np.float32)

    return run


def position_in_tile(images, canny):
    """Depends on the pixel's place in its window (a ramp across it) and on the image: stitched
    without blending, every window border would be a step of ~0.3."""
    s = images.shape[2]
    ramp = 0.3 * np.arange(s, dtype=np.float32) / s
    return 0.5 * images[:, 0].astype(np.float32) / 255 + ramp[None, None, :]


def smooth_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    grey = 128 + 100 * np.sin(xx / 90) * np.cos(yy / 70)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


@pytest.mark.parametrize("length", [64, 65, 100, 257, 700, 4096])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_windows_cover_the_image_with_the_overlap_asked(length, overlap):
    tile = 64
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(0, length - tile)
    assert starts == sorted(set(starts))
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    gaps = np.diff(starts)
    assert (gaps <= int(tile * (1 - overlap))).all()  # overlap at least as asked


def test_weights_sum_correctly_at_borders_and_corners():
    tile, h, w = 32, 70, 90
    weight = gaussian_weight(tile)
    assert weight.max() == 1 and weight.min() > 0
    assert np.allclose(weight, weight.T) and np.allclose(weight, weight[::-1, ::-1])
    # the sum of the weights of every window covering a pixel, as the blending accumulates it
    total = np.zeros((h, w), np.float64)
    ys, xs = tile_starts(h, tile, 0.25), tile_starts(w, tile, 0.25)
    for y in ys:
        for x in xs:
            total[y : y + tile, x : x + tile] += weight
    assert (total > 0).all()
    # corners are covered by one window only: its own (smallest) weight
    assert total[0, 0] == pytest.approx(float(weight[0, 0]))
    assert total[-1, -1] == pytest.approx(float(weight[-1, -1]))
    # a constant prediction blends to exactly that constant, corners and borders included
    for value in (1.0, 0.37):
        bands = list(iter_blended_rows(ArrayRows(smooth_image(h, w)), constant(value), tile=tile))
        assert [b[0] for b in bands][0] == 0 and bands[-1][1] == h
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))  # consecutive, in order
        out = np.concatenate([b[2] for b in bands])
        assert out.shape == (h, w)
        np.testing.assert_allclose(out, value, rtol=1e-6)


def test_window_values_are_weighted_by_position():
    """Each window predicts its own constant: a pixel covered by one window takes its value,
    and in between the blend moves monotonically from one window's value to the next."""
    tile, w = 32, 56  # two windows across: at 0 and 24
    calls = iter([0.0, 1.0])

    def by_window(images, canny):
        return np.stack([np.full(images.shape[2:], next(calls), np.float32) for _ in images])

    (_, _, out), *_ = list(iter_blended_rows(ArrayRows(smooth_image(32, w)), by_window, tile=tile))
    row = out[16]
    assert row[:24].max() == 0.0 and row[32:].min() == 1.0
    assert (np.diff(row) >= 0).all()
    # symmetric about the middle of the overlap (24…31): equal weights at 27.5
    np.testing.assert_allclose(row[24:32] + row[24:32][::-1], 1.0, atol=1e-6)
    assert row[27] < 0.5 < row[28]


def test_seams_are_invisible():
    image = smooth_image(320, 384)  # 5 × 6 windows of 64 without overlap
    blended = predict_tiled(image, position_in_tile, tile=64, overlap=0.25)
    stitched = predict_tiled(image, position_in_tile, tile=64, overlap=0.0)
    image_step = 0.5 * np.abs(np.diff(image[:, :, 0].astype(np.float32) / 255, axis=1)).max()
    # side by side without overlap, the window borders are steps of ~0.3
    assert np.abs(np.diff(stitched, axis=1)).max() > 0.25
    # blended: no step anywhere, the largest change between neighbours stays small
    assert np.abs(np.diff(blended, axis=1)).max() < 0.05 + image_step
    assert np.abs(np.diff(blended, axis=0)).max() < 0.01 + image_step


def test_small_and_odd_images_keep_their_size():
    for h, w in ((20, 45), (1, 70), (33, 33), (65, 200)):
        out = predict_tiled(smooth_image(h, w), constant(0.25), tile=32)
        assert out.shape == (h, w) and np.allclose(out, 0.25)
    for scale in (0.5, 1.7):
        out = predict_tiled(smooth_image(90, 70), constant(0.75), tile=32, scale=scale)
        assert out.shape == (90, 70) and np.allclose(out, 0.75)


def test_resampling_band_by_band_equals_whole():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (123, 157, 3), dtype=np.uint8)
    for scale in (0.5, 0.37, 1.6, 2.0):
        whole = rescale(image, scale)
        assert whole.shape[:2] == scaled_size(123, 157, scale)
        hs, ws = whole.shape[:2]
        for start in range(0, hs, 29):
            stop = min(hs, start + 41)
            band = rescale_rows(lambda a, b: image[a:b], (123, 157), (hs, ws), start, stop)
            np.testing.assert_array_equal(band, whole[start:stop])


@pytest.fixture(scope="module")
def seg32(tmp_path_factory):
    weights = make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=32)
    return weights, Segmenter.from_pretrained(weights, device="cpu", exact=True)


def test_one_tile_equals_the_whole_image_prediction(seg32):
    weights, whole = seg32
    tiled = Segmenter(whole.runner, image_size=32, tile=32)  # the same runner, tiled
    assert tiled.tiled and not whole.tiled
    files = sorted((sample_root() / "test" / "images").glob("*.png"))[:2]
    for f in files:
        image = read_image(f)[40:72, 50:82]  # the model's size: one window covers it
        a, b = whole(image), tiled(image)
        # the same runner call; the blend (p·w)/w costs at most a rounding (1 ulp)
        np.testing.assert_allclose(a.probability, b.probability, rtol=3e-7, atol=0)
        np.testing.assert_array_equal(a.mask, b.mask)
    with pytest.raises(MSRFError, match="overlap"):
        Segmenter(whole.runner, image_size=32, tile=32, overlap=0.95)
    with pytest.raises(MSRFError, match="tile"):
        Segmenter(whole.runner, image_size=32, tile=30)
    with pytest.raises(MSRFError, match="scale"):
        Segmenter(whole.runner, image_size=32, scale=0)
    assert Segmenter(whole.runner, image_size=32, scale=0.5).tile_size == 32  # tiles at S


def _mosaic(h: int, w: int) -> np.ndarray:
    files = sorted((sample_root() / "train" / "images").glob("*.png"))
    canvas = np.zeros((h, w, 3), np.uint8)
    k = 0
    for y in range(0, h, 180):
        for x in range(0, w, 180):
            part = read_image(files[k % len(files)])
            k += 1
            hh, ww = min(180, h - y, part.shape[0]), min(180, w - x, part.shape[1])
            canvas[y : y + hh, x : x + ww] = part[:hh, :ww]
    return canvas


def test_tiff_rows_memory_mapped_or_decoded_equal_the_file(tmp_path):
    image = _mosaic(150, 170)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image, photometric="rgb")
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, image, photometric="rgb", compression="zlib", tile=(32, 48))
    strips = tmp_path / "planar.tif"
    tifffile.imwrite(
        strips,
        image.transpose(2, 0, 1),
        photometric="rgb",
        planarconfig="separate",
        compression="zlib",
        rowsperstrip=7,
    )
    grey16 = tmp_path / "grey16.tif"
    tifffile.imwrite(grey16, image[:, :, 1].astype(np.uint16) * 37 + 1000, compression="zlib")
    for path, mapped in ((plain, True), (tiled, False), (strips, False), (grey16, False)):
        with TiffRows(path) as rows:
            assert rows.memory_mapped is mapped
            assert (rows.height, rows.width) == (150, 170)
            band = np.concatenate([rows.rows(a, min(150, a + 40)) for a in range(0, 150, 40)])
            np.testing.assert_array_equal(band, read_image(path))
    noisy = image[:, :, 1].astype(np.float32) * 3.5 - 20
    noisy[5, 7] = 9e4  # an outlier: percentile normalisation ignores it, min-max does not
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, noisy, compression="zlib", rowsperstrip=16)
    for path in (grey16, floats):
        for rule in ("minmax", "percentile"):
            with TiffRows(path, normalize=rule) as rows:
                band = np.concatenate([rows.rows(a, min(150, a + 64)) for a in range(0, 150, 64)])
            np.testing.assert_array_equal(band, read_image(path, normalize=rule))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([image, image]), photometric="rgb")
    assert open_tiff_rows(stack) is None  # pages: read whole, not band by band
    assert open_tiff_rows(tmp_path / "x.png") is None


def test_tiff_written_band_by_band_equals_in_memory(tmp_path):
    image = _mosaic(300, 350)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, photometric="rgb", compression="zlib", tile=(64, 64))
    expected = predict_tiled(image, position_in_tile, tile=64, scale=0.75, batch_size=5)
    with TiffRows(path) as source:
        preview = predict_tiff(
            source,
            position_in_tile,
            mask_path=tmp_path / "mask.tif",
            probability_path=tmp_path / "prob.tif",
            threshold=0.6,
            preview=True,
            tile=64,
            scale=0.75,
            batch_size=5,
        )
    mask, prob = tifffile.imread(tmp_path / "mask.tif"), tifffile.imread(tmp_path / "prob.tif")
    assert mask.shape == prob.shape == (300, 350) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.where(expected >= 0.6, 255, 0))
    np.testing.assert_array_equal(prob, np.rint(np.clip(expected, 0, 1) * 65535))
    rgb, small = preview.result()
    assert rgb.shape[:2] == small.shape == (300, 350)  # under 2048 px: not reduced


class FakeRunner:
    """The runner protocol, cheap: a function of the pixels and of the place in the window."""

    numerics, normalize = "fake", "minmax"

    def __call__(self, images, canny):
        return position_in_tile(images, canny) + 0.2 * canny[:, 0]


def test_predict_large_tiff_through_the_memory_map(tmp_path, monkeypatch, caplog):
    """``msrf predict --tile`` of an uncompressed TIFF: read through a memory map, written as a
    TIFF mask band by band, equal to the in-memory tiled prediction of the same image."""
    runner = FakeRunner()
    use_runner(monkeypatch, runner, 64)
    image = _mosaic(600, 700)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "large.tif", image, photometric="rgb")
    with TiffRows(inputs / "large.tif") as rows:
        assert rows.memory_mapped
    out = tmp_path / "out"
    with said() as lines:
        written = predict(
            [inputs / "large.tif"],
            tiling=Tiling(tile=64),
            outputs=Outputs(out=out, overlay=True, probabilities=True),
        )
    assert written == [out / "large.tif"] and "tiles of 64², overlap 0.25" in lines[-1]
    # the shipped weights were trained on resized images: the scale is the user's to check
    assert sum("resized to 64², not at native scale: choose --scale" in line for line in lines) == 1
    mask, prob = tifffile.imread(out / "large.tif"), tifffile.imread(out / "large_prob.tif")
    assert mask.shape == prob.shape == (600, 700) and (mask.dtype, prob.dtype) == (
        np.uint8,
        np.uint16,
    )
    expected = predict_tiled(image, runner, tile=64, overlap=0.25, canny=(10, 1000))
    np.testing.assert_array_equal(mask, np.where(expected >= 0.5, 255, 0))
    np.testing.assert_array_equal(prob, np.rint(np.clip(expected, 0, 1) * 65535))
    assert 0.05 < (mask > 0).mean() < 0.95
    assert read_image(out / "large_overlay.png").shape == (600, 700, 3)
    # the same through the Segmenter (the Python API)
    seg = Segmenter(runner, image_size=64, tile=64)
    np.testing.assert_array_equal(seg(inputs / "large.tif").mask, mask == 255)
    # a second run refuses to replace the outputs, as every msrf predict output
    with pytest.raises(MSRFError, match="exists"):
        predict([inputs / "large.tif"], tiling=Tiling(tile=64), outputs=Outputs(out=out))
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["large.tif", "large_overlay.png", "large_prob.tif"]
