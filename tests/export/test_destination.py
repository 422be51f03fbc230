"""Where an export may go (:mod:`msrfnet.export.destination`): one check for every format, run
before anything is exported — the suffix each format writes, a writable folder, an earlier
package replaced only with ``--overwrite``."""

from __future__ import annotations

import errno
import os
import re
import tempfile

import pytest
import yaml
from _model_helpers import make_weights

from msrfnet.cli import main
from msrfnet.errors import MSRFError
from msrfnet.export.destination import (
    PACKAGE_FILES,
    PACKAGE_NAMES,
    check_destination,
    check_suffix,
    export_format,
    is_earlier_package,
)
from msrfnet.safe_output import MANIFEST


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=16)


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("msrf export: error: "), lines
    return lines[0]


def _never(*args, **kwargs):
    pytest.fail("the export started before its destination was checked")


def _deny_writes_in(monkeypatch, folder):
    """``folder`` refuses new files (EACCES), as a read-only folder does for a user who is not
    root (these tests may run as root, which a chmod does not stop)."""
    real = tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)


def test_export_format_follows_the_flags_and_the_name():
    assert export_format("m.onnx") == "onnx"
    assert export_format("m.pt2") == "onnx"  # refused by the check: .pt2 needs --int8
    assert export_format("m.onnx", int8=True) == "int8-onnx"
    assert export_format("m.PT2", int8=True) == "int8-pt2"
    assert export_format("m.onnx", bioimageio=True) == "bioimageio"


def test_each_format_accepts_its_suffixes(tmp_path):
    for out, fmt in [
        ("m.onnx", "onnx"),
        ("M.ONNX", "onnx"),
        ("q.onnx", "int8-onnx"),
        ("q.pt2", "int8-pt2"),
        ("pkg.zip", "bioimageio"),
        ("pkg", "bioimageio"),  # a folder
    ]:
        check_suffix(tmp_path / out, fmt)
    (tmp_path / "v1.2").mkdir()
    check_suffix(tmp_path / "v1.2", "bioimageio")  # an existing folder, whatever its name


@pytest.mark.parametrize(
    "out,fmt,message",
    [
        ("model.pt", "onnx", r"unknown suffix \.pt; msrf export writes \.onnx \(with --int8: "),
        ("model", "onnx", r"model: no suffix; msrf export writes \.onnx"),
        ("model.pt2", "onnx", "a .pt2 package is the int8 CPU model; add --int8"),
        ("q.pt", "int8-onnx", r"unknown suffix \.pt; msrf export --int8 writes \.onnx .* \.pt2"),
        ("q.onnx", "int8-pt2", r"needs the \.pt2 suffix"),
        ("pkg.tar", "bioimageio", r"unknown suffix \.tar; a bioimage\.io package is a \.zip"),
    ],
)
def test_an_unknown_suffix_is_refused_naming_the_accepted_ones(tmp_path, out, fmt, message):
    with pytest.raises(MSRFError, match=message):
        check_destination(tmp_path / out, fmt)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_pt_file_before_loading_the_weights(weights, tmp_path, capsys, monkeypatch):
    """``msrf export --out model.pt`` wrote an ONNX file named .pt, exit 0."""
    import msrfnet.export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "load_model", _never)
    out = tmp_path / "model.pt"
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"--out {out}: unknown suffix .pt; msrf export writes .onnx" in line
    assert "--int8: .onnx or .pt2" in line and "--bioimageio: a .zip or a folder" in line
    assert main(["export", "--weights", str(weights), "--out", str(out), "--int8"]) == 2
    assert "msrf export --int8 writes .onnx (onnxruntime) or .pt2" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_writable_destination_passes_and_leaves_nothing(tmp_path):
    target = check_destination(tmp_path / "new" / "deeper" / "m.onnx", "onnx")
    assert target.path == tmp_path / "new" / "deeper" / "m.onnx" and target.folder is not None
    assert list(tmp_path.iterdir()) == []  # the folders are made by the write, not the check
    assert check_destination(tmp_path / "pkg", "bioimageio").folder is None  # a package folder


def test_an_unwritable_folder_is_refused_in_one_line(tmp_path, monkeypatch):
    _deny_writes_in(monkeypatch, tmp_path)
    for out, fmt in [
        (tmp_path / "m.onnx", "onnx"),
        (tmp_path / "q.onnx", "int8-onnx"),
        (tmp_path / "q.pt2", "int8-pt2"),
        (tmp_path / "pkg.zip", "bioimageio"),
        (tmp_path / "pkg", "bioimageio"),
        (tmp_path / "missing" / "m.onnx", "onnx"),  # its nearest existing folder decides
    ]:
        with pytest.raises(MSRFError, match=rf"^{re.escape(str(out))}: cannot write \(permission"):
            check_destination(out, fmt)
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.undo()
    with pytest.raises(MSRFError, match="file: cannot create the output folder"):
        check_destination(tmp_path / "file" / "sub" / "m.onnx", "onnx")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(MSRFError, match="cannot write"):
        check_destination(tmp_path / "ro" / "pkg.zip", "bioimageio")


@pytest.mark.parametrize(
    "args,stage",
    [
        (["--out", "m.onnx"], "msrfnet.export.onnx.load_model"),
        (["--int8", "--out", "q.onnx"], "msrfnet.export.onnx_int8.export_onnx"),
        (["--int8", "--out", "q.pt2"], "msrfnet.export.pt2_int8.quantize_model"),
        (["--bioimageio", "pkg.zip"], "msrfnet.export.onnx.export_onnx"),
        (["--bioimageio", "pkg"], "msrfnet.export.onnx.export_onnx"),
    ],
)
def test_every_format_checks_the_folder_before_exporting(
    weights, tmp_path, capsys, monkeypatch, args, stage
):
    """``msrf export --bioimageio`` into a folder it cannot write ended in a PermissionError
    traceback after ~40 s of exporting."""
    if "q.pt2" in args:
        pytest.importorskip("torchao")
    monkeypatch.setattr(stage, _never)  # the export's first expensive step: never reached
    _deny_writes_in(monkeypatch, tmp_path)
    args = [a if a.startswith("--") else str(tmp_path / a) for a in args]
    assert main(["export", "--weights", str(weights), "--image-size", "16", *args]) == 2
    line = _one_error_line(capsys)
    assert line.endswith(": cannot write (permission denied)") and str(tmp_path) in line
    assert list(tmp_path.iterdir()) == []


def _fake_package(folder, name=PACKAGE_NAMES[0]):
    folder.mkdir()
    (folder / "rdf.yaml").write_text(yaml.safe_dump({"name": name}))
    (folder / "msrfnet.onnx").write_bytes(b"onnx")
    return folder


def test_an_earlier_package_folder_is_replaced_only_with_overwrite(tmp_path):
    package = _fake_package(tmp_path / "pkg")
    assert is_earlier_package(package) and {"rdf.yaml", "msrfnet.onnx"} <= PACKAGE_FILES
    with pytest.raises(MSRFError, match=r"pkg: exists \(an earlier msrf .*pass --overwrite"):
        check_destination(package, "bioimageio", option="--bioimageio")
    check_destination(package, "bioimageio", overwrite=True)
    (package / "notes.txt").write_text("mine")  # a user's file in it: never deleted
    assert not is_earlier_package(package)
    with pytest.raises(MSRFError, match="pkg: exists and is not an msrf bioimage.io package"):
        check_destination(package, "bioimageio", overwrite=True)
    other = _fake_package(tmp_path / "other", name="someone's model")
    assert not is_earlier_package(other)
    assert not is_earlier_package(tmp_path / "nothing")


def test_a_zip_is_an_export_file_of_the_manifest(tmp_path):
    """An earlier package zip is ours only by the manifest (not by the name in its rdf.yaml)."""
    target = check_destination(tmp_path / "pkg.zip", "bioimageio")
    target.write_file(lambda tmp: open(tmp, "wb").write(b"PK"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "pkg.zip"]
    with pytest.raises(MSRFError, match=r"pkg.zip: exists \(written by .*pass --overwrite"):
        check_destination(tmp_path / "pkg.zip", "bioimageio")
    check_destination(tmp_path / "pkg.zip", "bioimageio", overwrite=True)
    (tmp_path / "user.zip").write_bytes(b"PK")
    with pytest.raises(MSRFError, match="user.zip: exists and is a file msrf did not write"):
        check_destination(tmp_path / "user.zip", "bioimageio", overwrite=True)


def test_a_package_folder_never_goes_among_the_inputs(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    for out in (weights, weights / "pkg"):
        with pytest.raises(MSRFError, match=r"--bioimageio .*(is|lies inside) the input folder"):
            check_destination(out, "bioimageio", inputs=[weights], option="--bioimageio")
    check_destination(tmp_path / "pkg", "bioimageio", inputs=[weights])  # beside it: allowed
    with pytest.raises(MSRFError, match="input folder"):
        check_destination(weights / "pkg.zip", "bioimageio", inputs=[weights])
