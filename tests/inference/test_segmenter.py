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

    def spy(cls, *args, **kwargs):
        opened.append(kwargs.get("device"))
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
