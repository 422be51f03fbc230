"""``msrf predict``: any size and format in, same-size 0/255 masks out; TTA, probabilities and
overlays."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from _model_helpers import make_weights, mixed_folder, write_image

from msrfnet.cli import main
from msrfnet.errors import MSRFError
from msrfnet.inference.predict import SkippedInputs, predict
from msrfnet.inference.predict_files import gather_inputs, output_stems
from msrfnet.inference.runners import predict_probabilities
from msrfnet.option_groups import ModelSource, Outputs


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    sizes = mixed_folder(root)
    write_image(root / "nested" / "skipped.png", np.zeros((20, 20, 3), np.uint8))  # not searched
    (root / "notes.txt").write_text("not an image")  # skipped in a folder
    return root, sizes


def read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_masks_at_original_size_named_by_stem(weights, folder, tmp_path):
    root, sizes = folder
    written = predict(
        [str(root)],
        model=ModelSource(weights=weights, batch_size=3),
        outputs=Outputs(out=tmp_path / "out"),
    )
    assert sorted(p.name for p in written) == sorted(f"{s}.png" for s in sizes)
    fg = 0
    for path in written:
        mask = read(path)
        assert mask.dtype == np.uint8 and mask.ndim == 2
        assert mask.shape == tuple(sizes[path.stem])
        assert set(np.unique(mask)) <= {0, 255}
        fg += int((mask == 255).sum())
    assert fg > 0  # the calibrated model predicts some foreground


def test_tta_probabilities_overlay(weights, folder, tmp_path):
    root, sizes = folder
    out = tmp_path / "out"
    predict(
        [str(root / "rgb_png.png"), str(root / "grey.png")],
        model=ModelSource(weights=weights, tta=True),
        outputs=Outputs(out=out, overlay=True, probabilities=True),
    )
    for stem in ("rgb_png", "grey"):
        mask, prob, over = (
            read(out / f"{stem}.png"),
            read(out / f"{stem}_prob.png"),
            read(out / f"{stem}_overlay.png"),
        )
        assert prob.dtype == np.uint16 and prob.shape == mask.shape == tuple(sizes[stem])
        assert over.shape == (*sizes[stem], 3) and over.dtype == np.uint8
        # the mask is the thresholded probability (quantisation can flip pixels sitting at 0.5)
        assert int(((prob / 65535.0 >= 0.5) != (mask == 255)).sum()) <= 2
        assert 0 < prob.max() <= 65535


def test_tta_unflips_each_prediction():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 8, 16), dtype=np.uint8)
    canny = (rng.random((2, 1, 8, 16)) < 0.2).astype(np.uint8)

    def position_sensitive(im, c):  # identity on the image plus a fixed left-to-right ramp
        return (
            im[:, 0].astype(np.float32) / 255
            + c[:, 0]
            + np.linspace(0, 1, im.shape[-1], dtype=np.float32)
        )

    plain = predict_probabilities(position_sensitive, images, canny)
    tta = predict_probabilities(position_sensitive, images, canny, tta=True)
    ramp = np.linspace(0, 1, 16, dtype=np.float32)
    expected = (
        plain - ramp + (2 * ramp + ramp[::-1]) / 3
    )  # content unflipped exactly; ramp averaged
    np.testing.assert_allclose(tta, expected, atol=1e-6)


def test_duplicate_stems_are_disambiguated(weights, tmp_path, caplog, monkeypatch):
    # msrfnet.cli.main() (called by other tests) gives the package logger its own stderr handler
    # and stops propagation; route records to caplog for this test
    logger = logging.getLogger("msrfnet")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    a = write_image(tmp_path / "in" / "a.png", np.full((24, 24, 3), 90, np.uint8))
    b = write_image(tmp_path / "in" / "a.jpg", np.full((24, 24, 3), 90, np.uint8))
    c = write_image(tmp_path / "other" / "a.png", np.full((16, 24, 3), 90, np.uint8))
    with caplog.at_level(logging.WARNING, logger="msrfnet"):
        written = predict(
            [str(tmp_path / "in"), str(c), str(a)],
            model=ModelSource(weights=weights),
            outputs=Outputs(out=tmp_path / "out"),
        )
    assert [p.name for p in written] == ["a.png", "a-2.png", "a-3.png"]  # a.jpg sorts before a.png
    assert read(written[2]).shape == (16, 24)
    assert "a.png" in caplog.text and "taken" in caplog.text
    assert output_stems([a, b], ["", "_overlay"]) == ["a", "a-2"]
    assert output_stems([tmp_path / "x_overlay.png", tmp_path / "x.png"], ["", "_overlay"]) == [
        "x_overlay",
        "x-2",
    ]


def test_inputs_rules(folder, tmp_path):
    root, sizes = folder
    files = gather_inputs([str(root), str(root / "grey.png")])  # a file given twice counts once
    assert sorted(f.stem for f in files) == sorted(sizes)
    with pytest.raises(MSRFError, match="missing.png: no such file"):
        gather_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(MSRFError, match="notes.txt: not a supported image type"):
        gather_inputs([str(root / "notes.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MSRFError, match="empty: no image files"):
        gather_inputs([str(tmp_path / "empty")])


def test_corrupt_file_names_it(weights, tmp_path, capsys):
    write_image(tmp_path / "in" / "fine.png", np.full((20, 30, 3), 120, np.uint8))
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    # in a folder, the bad file is skipped and the others written (test_predict_resilience.py)
    with pytest.raises(SkippedInputs, match="broken.png") as skipped:
        predict(
            [str(tmp_path / "in")],
            model=ModelSource(weights=weights),
            outputs=Outputs(out=tmp_path / "out"),
        )
    assert [p.name for p in skipped.value.written] == ["fine.png"]
    capsys.readouterr()
    code = main(["predict", str(bad), "--weights", str(weights), "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "broken.png" in err[0]


def test_bad_options(weights, folder, tmp_path):
    root, _ = folder
    with pytest.raises(MSRFError, match="multiple of 8"):
        predict(
            [str(root)],
            model=ModelSource(weights=weights, image_size=30),
            outputs=Outputs(out=tmp_path),
        )
    with pytest.raises(MSRFError, match="threshold"):
        predict(
            [str(root)],
            model=ModelSource(weights=weights, threshold=1.5),
            outputs=Outputs(out=tmp_path),
        )
    with pytest.raises(MSRFError, match="not both"):
        predict(
            [str(root)],
            model=ModelSource(weights=weights, onnx=tmp_path / "m.onnx"),
            outputs=Outputs(out=tmp_path),
        )
    with pytest.raises(MSRFError, match="nope.onnx: no such ONNX file"):
        predict(
            [str(root)],
            model=ModelSource(onnx=tmp_path / "nope.onnx"),
            outputs=Outputs(out=tmp_path),
        )


def test_image_size_override_and_cli(weights, folder, tmp_path, capsys):
    root, sizes = folder
    code = main(
        [
            "predict",
            str(root / "rgb_png.png"),
            "--weights",
            str(weights),
            "--out",
            str(tmp_path / "o"),
            "--image-size",
            "40",
            "--threshold",
            "0.3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "40² model input" in out and str(weights) in out
    assert read(tmp_path / "o" / "rgb_png.png").shape == tuple(sizes["rgb_png"])


def test_cpu_fast_path_and_exact(weights, folder, tmp_path, monkeypatch):
    """On a CPU with native bf16 the default runs bf16 + sub-pixel; ``exact`` runs float32, and
    the two give nearly the same probabilities (a CPU without bf16 runs float32 either way)."""
    import torch

    from msrfnet.accel.cpu import CPUInferenceModel, cpu_supports_bf16
    from msrfnet.data import read_image
    from msrfnet.data.preprocess import model_inputs
    from msrfnet.inference.runners import TorchRunner
    from msrfnet.model.loading import load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = load_model(weights)[0]
    fast, exact = TorchRunner(model, "cpu"), TorchRunner(model, "cpu", exact=True)
    assert exact.numerics == "float32" and not isinstance(exact.model, CPUInferenceModel)
    if cpu_supports_bf16():
        assert fast.numerics.startswith("bfloat16") and isinstance(fast.model, CPUInferenceModel)
    else:
        assert fast.numerics == "float32"
    root, _ = folder
    images, canny = model_inputs([read_image(p) for p in sorted(root.glob("*.png"))], 32, 10, 1000)
    p_fast, p_exact = fast(images, canny), exact(images, canny)
    assert p_fast.dtype == p_exact.dtype == np.float32 and p_fast.shape == p_exact.shape
    assert np.abs(p_fast - p_exact).max() < 3e-2
    assert 0 < (p_exact >= 0.5).mean() < 1  # the calibrated model is not constant


def test_cli_exact_flag_reaches_predict(weights, folder, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root, _ = folder
    assert (
        main(
            [
                "predict",
                str(root / "grey.png"),
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "o"),
                "--exact",
            ]
        )
        == 0
    )
    assert "numerics: float32" in capsys.readouterr().out


# --- the plan, without a model ------------------------------------------------------------------


def _no_model(monkeypatch):
    """Make loading any model fail: a plan must not need one."""
    import msrfnet.inference.runners as runners

    def refuse(*args, **kwargs):
        raise AssertionError("the plan loaded a model")

    monkeypatch.setattr(runners, "open_runner", refuse)
    monkeypatch.setattr(runners, "load_torch_runner", refuse)


def test_plan_names_kinds_and_refusals_without_a_model(tmp_path, monkeypatch):
    import tifffile

    from msrfnet.inference.predict import plan_predict
    from msrfnet.option_groups import Objects, Tiling

    _no_model(monkeypatch)
    model = ModelSource(weights=str(write_bytes(tmp_path / "w.safetensors", b"not read")))
    src = tmp_path / "in"
    write_image(src / "a.png", np.zeros((20, 24, 3), np.uint8))
    write_image(src / "a.jpg", np.zeros((20, 24, 3), np.uint8))
    tifffile.imwrite(src / "big.tif", np.zeros((40, 48, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(src / "z.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    out = Outputs(tmp_path / "out", probabilities=True)
    plan = plan_predict([src], model=model, outputs=out)
    assert plan.suffixes == ("", "_prob") and not plan.tiled and plan.strict is False
    assert [(j.source.name, j.stem, j.names, j.kind) for j in plan.jobs] == [
        ("a.jpg", "a", ("a.png", "a_prob.png"), "resized"),
        ("a.png", "a-2", ("a-2.png", "a-2_prob.png"), "resized"),
        ("big.tif", "big", ("big.png", "big_prob.png"), "resized"),
        ("z.tif", "z", ("z.tif", "z_prob.tif"), "stack"),
    ]
    tiled = plan_predict([src], model=model, tiling=Tiling(tile=16), outputs=out)
    assert tiled.tiled and [j.kind for j in tiled.jobs] == ["tiled", "tiled", "streamed", "stack"]
    assert tiled.jobs[2].names == ("big.tif", "big_prob.tif")  # read and written band by band
    with_objects = plan_predict(
        [src], model=model, tiling=Tiling(16), objects=Objects(), outputs=out
    )
    assert with_objects.jobs[2].kind == "tiled"  # objects need the whole image
    assert with_objects.jobs[0].names[2:] == ("a_labels.tif", "a_objects.csv")
    assert tiled.settings != plan.settings and plan.settings["model"] is not None
    with pytest.raises(MSRFError, match="lies inside the input folder"):
        plan_predict([src], model=model, outputs=Outputs(src / "masks"))
    with pytest.raises(MSRFError, match="would replace the input file"):
        plan_predict([src / "z.tif"], model=model, outputs=Outputs(src))
    assert plan_predict([src / "big.tif"], model=model, outputs=Outputs(src)).strict  # one input


def test_plan_keeps_what_an_earlier_run_wrote_with_the_same_settings(tmp_path, monkeypatch):
    from msrfnet.inference.predict import plan_predict
    from msrfnet.safe_output import OutputFolder

    _no_model(monkeypatch)
    model = ModelSource(weights=str(write_bytes(tmp_path / "w.safetensors", b"not read")))
    for name in ("a", "b"):
        write_image(tmp_path / "in" / f"{name}.png", np.zeros((8, 8, 3), np.uint8))
    first = plan_predict([tmp_path / "in"], model=model, outputs=Outputs(tmp_path / "out"))
    earlier = OutputFolder(tmp_path / "out", "msrf predict", settings=first.settings)
    earlier.write_bytes("a.png", b"a mask")  # as if an earlier run was stopped after a.png
    resume = Outputs(tmp_path / "out", skip_existing=True)
    plan = plan_predict([tmp_path / "in"], model=model, outputs=resume)
    assert [j.done for j in plan.jobs] == [True, False] and [j.stem for j in plan.todo] == ["b"]
    assert plan.strict  # one image left to predict: its own error
    with pytest.raises(MSRFError, match="a.png: written by an earlier msrf run with other"):
        plan_predict([tmp_path / "in"], model=replace(model, threshold=0.3), outputs=resume)
    with pytest.raises(MSRFError, match="pass --overwrite to replace or --skip-existing"):
        plan_predict([tmp_path / "in"], model=model, outputs=Outputs(tmp_path / "out"))


def test_plan_refuses_a_size_this_machine_cannot_hold(tmp_path, monkeypatch, capsys):
    from msrfnet import options
    from msrfnet.inference.predict import plan_predict
    from msrfnet.option_groups import Tiling

    _no_model(monkeypatch)
    monkeypatch.setattr(options, "available_ram", lambda: (2**30, "of RAM available"))
    x = write_image(tmp_path / "in" / "x.png", np.zeros((8, 8, 3), np.uint8))
    outputs = Outputs(tmp_path / "out")
    plan_predict([x], model=ModelSource(image_size=512), outputs=outputs)  # 0.8 GiB: fits
    write_image(tmp_path / "in" / "y.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(MSRFError, match="^--image-size 512: predicting 2 inputs of 512×512"):
        plan_predict([tmp_path / "in"], model=ModelSource(image_size=512), outputs=outputs)
    with pytest.raises(MSRFError, match="^--tile 2048: predicting one input"):
        plan_predict([x], tiling=Tiling(tile=2048), outputs=outputs)
    argv = ["predict", str(x), "--out", str(tmp_path / "o")]
    assert main([*argv, "--image-size", "100000"]) == 2  # before the model loads
    err = capsys.readouterr().err.strip()
    assert err.startswith("msrf predict: error: --image-size 100000: predicting one input of")
    assert err.endswith("more than the 1.0 GiB of RAM available; lower --image-size")


def test_run_takes_any_segmenter(tmp_path):
    from msrfnet.inference.predict import plan_predict, run_plan
    from msrfnet.inference.segmenter import Segmenter

    write_image(tmp_path / "in" / "a.png", np.full((20, 24, 3), 200, np.uint8))
    write_image(tmp_path / "in" / "b.png", np.zeros((12, 16, 3), np.uint8))
    model = ModelSource(weights=str(write_bytes(tmp_path / "w.safetensors", b"not read")))
    plan = plan_predict([tmp_path / "in"], model=model, outputs=Outputs(tmp_path / "out"))
    red = Segmenter(lambda images, canny: images[:, 0].astype(np.float32) / 255, image_size=16)
    assert run_plan(plan, red) == [tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"]
    assert (read(tmp_path / "out" / "a.png") == 255).all()
    assert read(tmp_path / "out" / "b.png").shape == (12, 16)
    red.set_tiling(16)
    with pytest.raises(ValueError, match="without tiling"):
        run_plan(plan, red)  # the plan named its outputs for the resize protocol
