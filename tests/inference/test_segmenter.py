"""``msrfnet.Segmenter``: any image form in, a mask at the image's size out, equal to the
file-based pipeline; the one-input model (Canny in the graph) equals the two-input path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _model_helpers import make_weights
from PIL import Image

from msrfnet.data import canny_map, read_image, resize_image, sample_root
from msrfnet.errors import MSRFError
from msrfnet.inference.segmenter import Segmentation, Segmenter, as_rgb, resolve_device
from msrfnet.model.pipeline import ImageToProbability


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    weights = make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=32)
    return Segmenter.from_pretrained(weights, device="cpu", exact=True)


@pytest.fixture(scope="module")
def files():
    return sorted((sample_root() / "test" / "images").glob("*.png"))[:3]


def test_forms_of_one_image_agree(seg, files):
    path = files[0]
    rgb = read_image(path)
    by_path = seg(path)
    assert isinstance(by_path, Segmentation)
    assert by_path.mask.shape == rgb.shape[:2] and by_path.mask.dtype == bool
    assert by_path.probability.dtype == np.float32
    assert 0 < by_path.mask.mean() < 1
    for form in (
        str(path),
        rgb,
        Image.open(path),
        np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
    ):
        other = seg(form)
        np.testing.assert_allclose(other.probability, by_path.probability, atol=1e-6)


def test_grey_and_list_batches(seg, files):
    rgbs = [read_image(f)[:40, :50] for f in files]
    outs = seg([r[:, :, 0] for r in rgbs], batch_size=2)
    assert isinstance(outs, list) and len(outs) == 3
    assert all(o.mask.shape == (40, 50) for o in outs)
    one_by_one = [seg(r[:, :, 0]) for r in rgbs]
    for a, b in zip(outs, one_by_one):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)
    assert seg(rgbs[0], threshold=1.0).mask.sum() <= outs[0].mask.sum()


def test_bad_inputs_are_one_line_errors(seg):
    with pytest.raises(MSRFError, match="shape"):
        seg(np.zeros((4, 5, 6, 7), np.uint8))
    with pytest.raises(MSRFError, match="NaN"):
        seg(np.full((20, 20), np.nan, np.float32))
    with pytest.raises(MSRFError, match="threshold"):
        seg(np.zeros((20, 20), np.uint8), threshold=float("nan"))
    with pytest.raises(MSRFError, match="--device"):
        resolve_device("tpu")
    with pytest.raises(MSRFError, match="CUDA"):
        if not torch.cuda.is_available():
            resolve_device("cuda:0")
        else:
            raise MSRFError("CUDA present: nothing to refuse")


def test_as_rgb_rules(files):
    rgb = read_image(files[0])
    np.testing.assert_array_equal(as_rgb(files[0]), rgb)
    grey = as_rgb(rgb[:, :, 1])
    assert grey.shape == rgb.shape and (grey[:, :, 0] == grey[:, :, 2]).all()
    assert as_rgb(np.ones((5, 5), bool)).max() == 255
    # high depth and float are min-max stretched, as files are read
    stretched = (rgb.astype(np.float64) - rgb.min()) * 255 / (rgb.max() - rgb.min())
    np.testing.assert_array_equal(as_rgb(rgb.astype(np.uint16) * 300), np.rint(stretched))
    np.testing.assert_array_equal(as_rgb(rgb.astype(np.float32) / 7), np.rint(stretched))
    # non-finite pixels: the files' rule and message (data.io.check_finite)
    bad = rgb.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(MSRFError, match=rf"scan: 1 of {bad.size} pixel values are NaN or infinite"):
        as_rgb(bad, name="scan")


def test_one_input_model_equals_two_input_pipeline(seg, files):
    net = seg.runner.model
    rgbs = np.stack([resize_image(read_image(f), 32) for f in files])
    canny = np.stack([canny_map(r, 10, 1000) for r in rgbs])[:, None]
    images = rgbs.transpose(0, 3, 1, 2)
    ref = seg.runner(images, canny)
    one = ImageToProbability(net, 10, 1000).eval()
    with torch.inference_mode():
        got = one(torch.from_numpy(np.ascontiguousarray(images)))[:, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_predict_and_test_run_through_the_segmenter_on_the_device_asked(tmp_path, monkeypatch):
    """``msrf predict`` / ``msrf test`` open their model through ``Segmenter.open`` with
    ``--device``; the masks equal the Segmenter's own; an unusable device is one line, exit 2."""
    import cv2

    import msrfnet.inference.segmenter as segmenter_mod
    from msrfnet.cli import main

    weights = make_weights(tmp_path / "w.safetensors", image_size=32)
    opened = []
    real_open = segmenter_mod.Segmenter.open.__func__

    def spy(cls, *args, **kwargs):  # the device alone, or in model=ModelSource(...)
        opened.append(kwargs.get("device") or getattr(kwargs.get("model"), "device", None))
        return real_open(cls, *args, **kwargs)

    monkeypatch.setattr(segmenter_mod.Segmenter, "open", classmethod(spy))
    images = sample_root() / "test" / "images"
    argv = ["predict", str(images), "--weights", str(weights), "--out", str(tmp_path / "p")]
    assert main([*argv, "--device", "cpu", "--exact"]) == 0
    assert opened == ["cpu"]
    seg = Segmenter.from_pretrained(weights, device="cpu", exact=True)
    for path in sorted(images.glob("*.png"))[:2]:
        written = cv2.imread(str(tmp_path / "p" / path.name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(written == 255, seg(path).mask)
    data = sample_root()
    test = ["test", "--data", str(data), "--weights", str(weights), "--out", str(tmp_path / "t")]
    opened.clear()
    assert main([*test, "--device", "cpu"]) == 0
    assert opened == ["cpu"]
    if not torch.cuda.is_available():
        assert main([*argv[:-1], str(tmp_path / "q"), "--device", "cuda:1"]) == 2
        assert not (tmp_path / "q").exists() or not any((tmp_path / "q").glob("*.png"))
    assert main([*argv[:-1], str(tmp_path / "r"), "--device", "tpu"]) == 2


def _red(images, canny):
    """A stand-in runner: the red channel / 255."""
    return images[:, 0].astype(np.float32) / 255


def test_a_folder_is_not_an_image(tmp_path):
    seg = Segmenter(_red, image_size=16)
    with pytest.raises(MSRFError) as refused:
        seg(tmp_path)
    assert str(refused.value).startswith(f"{tmp_path}: is a folder, not an image; pass an image")
    assert "msrf predict" in str(refused.value) and "file not found" not in str(refused.value)
    with pytest.raises(MSRFError, match="missing.png: file not found"):  # a missing file still
        seg(tmp_path / "missing.png")


def test_options_as_groups_or_keywords_by_the_same_rules():
    from msrfnet.option_groups import Objects, Tiling

    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    by_words = Segmenter(_red, image_size=16, tile=16, overlap=0.5, min_size=3)
    by_group = Segmenter(_red, image_size=16, tiling=Tiling(16, 0.5), objects=Objects(3))
    assert by_words.tiling == by_group.tiling == {"tile": 16, "overlap": 0.5, "scale": None}
    assert (by_words.min_size, by_group.min_size) == (3, 3)
    assert np.array_equal(by_words(image).probability, by_group(image).probability)
    with pytest.raises(MSRFError, match="^tile: give them in tiling= or on their own"):
        Segmenter(_red, image_size=16, tiling=Tiling(16), tile=16)
    with pytest.raises(MSRFError, match="^min_size -1: must be 0 or more"):
        Segmenter(_red, image_size=16, min_size=-1)
    with pytest.raises(TypeError, match="tiles"):
        Segmenter(_red, image_size=16, tiles=16)
    with pytest.raises(MSRFError, match="^batch_size 0: must be a positive whole number"):
        by_words(image, batch_size=0)
    seg = Segmenter(_red, image_size=16)
    seg.set_tiling(Tiling(scale=0.5))
    assert seg.tiling == {"tile": 16, "overlap": 0.25, "scale": 0.5}
    from msrfnet.option_groups import ModelSource

    with pytest.raises(MSRFError, match=r"^pass model=ModelSource\(...\) or the model's parts"):
        Segmenter.open("w.safetensors", model=ModelSource())


def test_a_size_this_machine_cannot_hold_is_refused_before_anything_runs(monkeypatch):
    import msrfnet.inference.runners as runners
    from msrfnet import options

    monkeypatch.setattr(options, "available_ram", lambda: (2**30, "of RAM available"))
    with pytest.raises(MSRFError, match=r"^image_size 4096: predicting one input of 4096×4096"):
        Segmenter(_red, image_size=4096)
    seg = Segmenter(_red, image_size=16)
    with pytest.raises(MSRFError, match=r"^tile 2048: .* more than the 1.0 GiB of RAM available"):
        seg.set_tiling(2048)
    assert not seg.tiled  # a refused tiling leaves the Segmenter as it was
    called = []
    monkeypatch.setattr(runners, "open_runner", lambda *a, **k: called.append(a))
    for size in ({"image_size": 100_000}, {"tile": 4096}):
        with pytest.raises(MSRFError, match="at once needs about"):
            Segmenter.open(**size)
    assert not called  # refused before the model loads
    with pytest.raises(MSRFError, match="^image_size 512: predicting 8 inputs"):
        Segmenter(_red, image_size=512)([np.zeros((8, 8), np.uint8)] * 8)  # 0.8 GiB each
