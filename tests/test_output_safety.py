"""Outputs never overwrite what msrf did not write (:mod:`msrfnet.safe_output`), through its API
and through ``msrf predict``, ``msrf test`` and ``msrf export``: never among the inputs, never over
a foreign file, earlier outputs replaced only with ``--overwrite``, atomic writes, and one line
naming the path and the cause for a full disk or a refused permission."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from _data_helpers import blob_pair, make_dataset, save
from _model_helpers import make_weights

import msrfnet.safe_output as so
from msrfnet.cli import main
from msrfnet.errors import MSRFError
from msrfnet.safe_output import MANIFEST, OutputFolder, file_target, refuse_collisions

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=16)


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name → SHA-256): to show nothing changed."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*.tmp")]


def _one_error_line(capsys, command: str) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith(f"msrf {command}: error: "), lines
    return lines[0]


def _predict(weights: Path, *args) -> int:
    return main(["predict", *map(str, args), "--weights", str(weights)])


def _images(folder: Path, n: int = 2) -> Path:
    for i in range(n):
        save(folder / f"img{i}.png", blob_pair(24, 32, seed=i)[0])
    return folder


def _disk_full_after(monkeypatch, calls: int, error: int = errno.ENOSPC):
    """Make the safe writer fail like a full disk (after half the bytes) from call ``calls`` on."""
    real = so.write_data
    count = [0]

    def write(path, data):
        count[0] += 1
        if count[0] <= calls:
            return real(path, data)
        Path(path).write_bytes(data[: len(data) // 2])  # a partial write, then the error
        raise OSError(error, os.strerror(error), str(path))

    monkeypatch.setattr(so, "write_data", write)


# --- the module ----------------------------------------------------------------------------------


def test_manifest_records_and_guards_each_name(tmp_path):
    out = OutputFolder(tmp_path / "o", "msrf predict")
    out.write_bytes("a.png", b"first")
    assert out.state("a.png") == "ours" and out.state("b.png") == "absent"
    with pytest.raises(MSRFError, match="a.png: exists .*pass --overwrite"):
        out.write_bytes("a.png", b"second")  # an earlier output: only with overwrite
    again = OutputFolder(tmp_path / "o", "msrf predict", overwrite=True)  # reads the manifest
    again.write_bytes("a.png", b"second")
    assert (tmp_path / "o" / "a.png").read_bytes() == b"second"
    # a user's file, a user's edit of an output, a folder: never replaced, even with overwrite
    (tmp_path / "o" / "mine.png").write_bytes(b"user")
    (tmp_path / "o" / "a.png").write_bytes(b"edited by the user")
    (tmp_path / "o" / "sub.png").mkdir()
    for name in ("mine.png", "a.png", "sub.png"):
        with pytest.raises(MSRFError, match=f"{name}: exists and is a (file msrf did not|folder)"):
            OutputFolder(tmp_path / "o", "msrf predict", overwrite=True).write_bytes(name, b"x")
    assert (tmp_path / "o" / "mine.png").read_bytes() == b"user"
    assert (tmp_path / "o" / "a.png").read_bytes() == b"edited by the user"
    assert not again.remove("mine.png") and (tmp_path / "o" / "mine.png").exists()


def test_a_torn_manifest_line_is_ignored(tmp_path):
    out = OutputFolder(tmp_path, "msrf test")
    out.write_text("metrics.json", "{}")
    with open(tmp_path / MANIFEST, "a") as f:
        f.write('{"file": "metrics.csv", "sha2')  # cut short by a crash
    later = OutputFolder(tmp_path, "msrf test", overwrite=True)
    assert later.state("metrics.json") == "ours"
    later.write_text("metrics.json", "{}\n")


def test_disk_full_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    out = OutputFolder(tmp_path, "msrf predict", overwrite=True)
    out.write_bytes("a.png", b"complete")
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(MSRFError) as info:
        out.write_bytes("a.png", b"a longer new content")
    assert str(info.value) == f"{tmp_path / 'a.png'}: cannot write (no space left on device)"
    assert (tmp_path / "a.png").read_bytes() == b"complete" and _no_temp_files(tmp_path)


def test_permission_denied_is_one_line(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(MSRFError, match=r"a.png: cannot write \(permission denied\)$"):
        OutputFolder(tmp_path, "msrf predict").write_bytes("a.png", b"x")


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes into read-only folders; the injected EACCES test covers it",
)
def test_read_only_folder_is_one_line(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(MSRFError, match="permission denied"):
            OutputFolder(tmp_path, "msrf predict").write_bytes("a.png", b"x")
    finally:
        tmp_path.chmod(0o755)


def test_inside_inputs_and_file_targets(tmp_path):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    for out in (inputs, inputs / "masks", inputs / "a" / ".."):
        with pytest.raises(MSRFError, match="--out .*(is|lies inside) the input folder"):
            refuse_collisions(out, input_folders=[inputs])
    refuse_collisions(tmp_path / "masks", input_folders=[inputs])  # a sibling is fine
    (tmp_path / "link").symlink_to(inputs)
    with pytest.raises(MSRFError, match="is the input folder"):
        refuse_collisions(tmp_path / "link", input_folders=[inputs])
    with pytest.raises(MSRFError, match="is a folder; name the file to write"):
        file_target(inputs, "msrf export")
    (tmp_path / "m.onnx").write_bytes(b"a user's model")
    with pytest.raises(MSRFError, match="m.onnx: exists and is a file msrf did not write"):
        file_target(tmp_path / "m.onnx", "msrf export", overwrite=True)


def test_collisions_with_input_files_are_exact(tmp_path):
    """Input files given by name: their folder, and folders beside or inside it, may hold
    outputs; only an output that is an input file is refused, in one line naming both."""
    slide = tmp_path / "slide.tif"
    slide.write_bytes(b"an image")
    files = {"input_files": [slide]}
    refuse_collisions(tmp_path / "masks", **files, outputs=["slide.tif", "slide.png"])
    refuse_collisions(tmp_path, **files, outputs=["slide.png", "slide_prob.png"])
    refuse_collisions(tmp_path / "deep" / "er", **files, outputs=["slide.tif"])
    with pytest.raises(MSRFError) as refused:
        refuse_collisions(tmp_path, **files, outputs=["slide.png", "slide.tif"])
    assert str(refused.value) == (
        f"--out {tmp_path}: the output {slide} would replace the input file {slide}; msrf "
        "never writes over its inputs, choose another folder"
    )
    (tmp_path / "here").symlink_to(tmp_path)  # the same folder by another name
    with pytest.raises(MSRFError, match="would replace the input file"):
        refuse_collisions(tmp_path / "here", **files, outputs=["slide.tif"], option="--into")
    with pytest.raises(MSRFError, match=r"^--out .*slide.tif: is the input file .*slide.tif; "):
        refuse_collisions(slide, **files)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)  # a link that loops is compared by its own path
    refuse_collisions(tmp_path, input_files=[loop], outputs=["loop_prob.png"])
    with pytest.raises(MSRFError, match="would replace the input file"):
        refuse_collisions(tmp_path, input_files=[loop], outputs=["loop.png"])


# --- msrf predict ---------------------------------------------------------------------------------


def test_predict_never_writes_among_its_inputs(weights, tmp_path, capsys):
    scans = _images(tmp_path / "scans")
    before = _digest(scans)
    for out in (scans, scans / "masks"):
        assert _predict(weights, scans, "--out", out) == 2
        assert "input folder" in _one_error_line(capsys, "predict")
    assert _predict(weights, scans / "img0.png", "--out", scans) == 2
    _one_error_line(capsys, "predict")
    assert _digest(scans) == before


def test_predict_beside_a_single_image_is_allowed(weights, tmp_path, capsys, monkeypatch):
    """The README's ``msrf predict slide.tif --tile 256 --out masks/``, run in the folder that
    holds the image: allowed, and so is ``--out .`` when no output is named like an input."""
    monkeypatch.chdir(_images(tmp_path / "scans", 1))
    save(Path("scan.jpg"), blob_pair(24, 32, seed=5)[0])
    before = _digest(Path("."))
    assert _predict(weights, "img0.png", "--tile", 16, "--out", "masks/") == 0
    assert sorted(_digest(Path("masks"))) == [MANIFEST, "img0.png"]
    assert _predict(weights, "scan.jpg", "--out", ".", "--probabilities") == 0
    assert {"scan.png", "scan_prob.png"} <= set(_digest(Path(".")))
    capsys.readouterr()
    assert _predict(weights, "img0.png", "--out", ".") == 2  # img0.png would replace itself
    assert "the output img0.png would replace the input file img0.png" in _one_error_line(
        capsys, "predict"
    )
    assert {k: v for k, v in _digest(Path(".")).items() if k in before} == before


def test_predict_never_replaces_ground_truth(weights, tmp_path, capsys):
    """``--out`` pointed at the test masks: same stems, files msrf did not write: refused, even
    with --overwrite, and nothing changes."""
    root = make_dataset(tmp_path / "d", {"test": 2})
    before = _digest(root)
    masks = root / "test" / "masks"
    for extra in ([], ["--overwrite"], ["--skip-existing"]):
        assert _predict(weights, root / "test" / "images", "--out", masks, *extra) == 2
        assert "exists and is a file msrf did not write" in _one_error_line(capsys, "predict")
    assert _digest(root) == before and not (masks / MANIFEST).exists()


def test_predict_rerun_needs_overwrite(weights, tmp_path, capsys):
    scans, out = _images(tmp_path / "scans"), tmp_path / "out"
    args = ["predict", str(scans), "--weights", str(weights), "--out", str(out)]
    assert main(args) == 0
    first = _digest(out)
    assert sorted(first) == [MANIFEST, "img0.png", "img1.png"]
    assert main(args) == 2
    line = _one_error_line(capsys, "predict")
    assert "pass --overwrite to replace or --skip-existing to keep" in line
    assert main([*args, "--overwrite", "--threshold", "0.9"]) == 0
    assert _digest(out)["img0.png"] != first["img0.png"]  # replaced (another threshold)
    with pytest.raises(SystemExit, match="2"):  # argparse: not both
        main([*args, "--overwrite", "--skip-existing"])
    assert "not allowed with argument --overwrite" in capsys.readouterr().err


def test_predict_disk_full_is_one_line_without_a_truncated_file(
    weights, tmp_path, capsys, monkeypatch
):
    scans, out = _images(tmp_path / "scans", 3), tmp_path / "out"
    _disk_full_after(monkeypatch, 1)
    assert _predict(weights, scans, "--out", out, "--batch-size", 1) == 2
    line = _one_error_line(capsys, "predict")
    assert line.endswith(f"error: {out / 'img1.png'}: cannot write (no space left on device)")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "img0.png"] and _no_temp_files(out)
    _disk_full_after(monkeypatch, 0, errno.EACCES)
    assert _predict(weights, scans, "--out", out, "--skip-existing") == 2
    assert _one_error_line(capsys, "predict").endswith("img1.png: cannot write (permission denied)")


def test_predict_out_that_is_a_file(weights, tmp_path, capsys):
    scans = _images(tmp_path / "scans", 1)
    (tmp_path / "taken").write_bytes(b"a user's file")
    assert _predict(weights, scans, "--out", tmp_path / "taken") == 2
    assert "exists and is not a folder" in _one_error_line(capsys, "predict")
    assert (tmp_path / "taken").read_bytes() == b"a user's file"


# --- msrf test ------------------------------------------------------------------------------------


def test_test_never_writes_into_the_dataset(weights, tmp_path, capsys):
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 2})
    before = _digest(root)
    images, masks = root / "test" / "images", root / "test" / "masks"
    for out, where in (
        (images, f"is the input folder {images}"),
        (masks / "report", f"lies inside the input folder {masks}"),
    ):
        assert (
            main(["test", "--data", str(root), "--weights", str(weights), "--out", str(out)]) == 2
        )
        assert _one_error_line(capsys, "test") == (
            f"msrf test: error: --out {out}: {where}; msrf never writes among its inputs, "
            "choose a folder outside it"
        )
    assert _digest(root) == before


def test_test_writes_its_report_into_a_run_folder_inside_the_dataset(
    weights, tmp_path, capsys, monkeypatch
):
    # cd mydata && msrf train --data . && msrf test --data .: the run folder is ./runs/<run>
    root = make_dataset(tmp_path / "mydata", {"train": 1, "val": 1, "test": 2})
    splits = _digest(root)
    run = root / "runs" / "msrf-demo"
    run.mkdir(parents=True)
    (run / "best.safetensors").write_bytes(weights.read_bytes())
    (run / "config.yaml").write_text("image_size: 16\n")
    monkeypatch.chdir(root)
    assert main(["test", "--data", "."]) == 0
    assert "results: runs/msrf-demo/test/" in capsys.readouterr().out
    assert {"metrics.json", "metrics.csv", MANIFEST} <= set(_digest(run / "test"))
    assert {k: v for k, v in _digest(root).items() if not k.startswith("runs/")} == splits
    assert main(["test", "--data", ".", "--out", "."]) == 0  # beside train/ val/ test/ too
    assert (root / "metrics.json").is_file()


def test_test_rerun_and_disk_full(weights, tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 2})
    out = tmp_path / "metrics"
    args = ["test", "--data", str(root), "--weights", str(weights), "--out", str(out)]
    assert main(args) == 0
    assert {"metrics.json", "metrics.csv", MANIFEST} <= set(_digest(out))
    capsys.readouterr()
    assert main(args) == 2
    line = _one_error_line(capsys, "test")
    assert "metrics.json: exists (written by an earlier msrf run); pass --overwrite" in line
    before = _digest(out)
    _disk_full_after(monkeypatch, 0)
    assert main([*args, "--overwrite"]) == 2
    line = _one_error_line(capsys, "test")
    assert line.endswith("metrics.json: cannot write (no space left on device)")
    assert _digest(out) == before and _no_temp_files(out)


# --- msrf export ----------------------------------------------------------------------------------


def test_export_refusals_are_one_line(weights, tmp_path, capsys):
    base = ["export", "--weights", str(weights), "--image-size", "8"]
    (tmp_path / "dir.onnx").mkdir()
    assert main([*base, "--out", str(tmp_path / "dir.onnx")]) == 2
    assert "is a folder" in _one_error_line(capsys, "export")
    (tmp_path / "user.onnx").write_bytes(b"a user's model")
    assert main([*base, "--out", str(tmp_path / "user.onnx"), "--overwrite"]) == 2
    assert "not write" in _one_error_line(capsys, "export")
    assert (tmp_path / "user.onnx").read_bytes() == b"a user's model"
    assert main([*base, "--out", str(weights.parent / "m.onnx")]) == 2  # beside the weights
    assert "input folder" in _one_error_line(capsys, "export")
    (tmp_path / "file").write_bytes(b"")
    assert main([*base, "--out", str(tmp_path / "file" / "m.onnx")]) == 2  # its folder is a file
    assert "exists and is not a folder" in _one_error_line(capsys, "export")


def test_export_rerun_and_disk_full(weights, tmp_path, capsys, monkeypatch):
    import msrfnet.export.onnx as export_mod

    out = tmp_path / "new" / "m.onnx"  # a missing folder is created
    args = ["export", "--weights", str(weights), "--image-size", "8", "--out", str(out)]
    assert main(args) == 0 and out.is_file()
    capsys.readouterr()
    assert main(args) == 2
    assert "pass --overwrite" in _one_error_line(capsys, "export")
    before = _digest(out.parent)

    def full_disk(path, metadata):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(export_mod, "_finish", full_disk)
    assert main([*args, "--overwrite"]) == 2
    line = _one_error_line(capsys, "export")
    assert line == f"msrf export: error: {out}: cannot write (no space left on device)"
    assert _digest(out.parent) == before and _no_temp_files(out.parent)


def test_int8_exports_check_their_output_first(weights, tmp_path):
    from msrfnet.export.onnx import export_onnx
    from msrfnet.export.onnx_int8 import export_int8, quantize_onnx

    calib = _images(tmp_path / "calib")
    src = export_onnx(weights, tmp_path / "src" / "fp32.onnx", image_size=8)
    before = _digest(src.parent)
    with pytest.raises(MSRFError, match="lies inside the input folder"):
        quantize_onnx(src, calib / "sub" / "q.onnx", calib)
    with pytest.raises(MSRFError, match="is the model being quantized"):
        quantize_onnx(src, src, calib, overwrite=True)  # an msrf export, and its input
    assert _digest(src.parent) == before
    (tmp_path / "q.onnx").write_bytes(b"a user's model")
    with pytest.raises(MSRFError, match="q.onnx: exists and is a file msrf did not write"):
        export_int8(weights, tmp_path / "q.onnx", calibration=calib, overwrite=True)
    assert (tmp_path / "q.onnx").read_bytes() == b"a user's model"
