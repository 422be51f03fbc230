"""``msrf export --bioimageio``: the bioimage.io package of the shipped weights passes the real
``bioimageio test`` offline (issue 14, item 4).

One module-scoped package: the shipped weights' single-input ONNX (the TorchScript exporter
call that :func:`msrfnet.export.onnx.export_onnx` makes) packaged with both weights formats; the
test runs bioimageio.core's ``test_model`` on it, with every socket connection refused in this
process. The zip output and the replacement of an earlier package use a second, ONNX-only package,
which the slow test also runs through the ``bioimageio test`` CLI.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import yaml
from _logs import said
from _shared import in_ci

from msrfnet.cli import main
from msrfnet.errors import MSRFError
from msrfnet.export.destination import check_destination
from msrfnet.safe_output import MANIFEST, OutputFolder

if not in_ci():  # in CI the dev extra brings them: missing there is a failure, not a skip
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")

from msrfnet.export.bioimageio import NAMES, package_bioimageio
from msrfnet.export.onnx import export_onnx
from msrfnet.model.loading import load_model
from msrfnet.weights.resolve import SHIPPED_WEIGHTS

FILES = (
    "rdf.yaml",
    "README.md",
    "cover.png",
    "msrfnet.onnx",
    "msrfnet.pt",
    "test_input.npy",
    "test_output.npy",
    "sample_input.tif",
    "sample_output.tif",
)


@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) every outgoing connection made in this process."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test_bioimageio: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture(scope="module")
def shipped():
    model, cfg, _ = load_model(SHIPPED_WEIGHTS)
    return model.eval().requires_grad_(False), cfg


@pytest.fixture(scope="module")
def onnx_file(shipped, tmp_path_factory):
    """The single-input ONNX of the shipped weights, as ``msrf export --bioimageio`` makes it."""
    path = tmp_path_factory.mktemp("onnx") / "msrfnet.onnx"
    return export_onnx(SHIPPED_WEIGHTS, path, single_input=True)


@pytest.fixture(scope="module")
def package(onnx_file, shipped, tmp_path_factory):
    out = tmp_path_factory.mktemp("bioimageio") / "msrfnet-kdsb"
    start = time.perf_counter()
    with said() as lines:
        assert (
            package_bioimageio(onnx_file, out, weights_path=SHIPPED_WEIGHTS, config=shipped[1])
            == out
        )
    assert lines[-1] == f"bioimageio: wrote {out}"
    print(f"packaged in {time.perf_counter() - start:.1f} s: {lines}")
    return out


def test_package_layout_and_metadata(package):
    assert sorted(p.name for p in package.iterdir()) == sorted(FILES)
    assert sorted(p.name for p in package.parent.iterdir()) == [package.name]  # no temp folder
    text = (package / "rdf.yaml").read_text()
    assert "http" not in text and "github_user" not in text  # test checks URLs over the network
    rdf = yaml.safe_load(text)
    assert rdf["name"] == NAMES[True] and rdf["format_version"].startswith("0.5.")
    assert rdf["license"] == "MIT" and rdf["cite"][0]["doi"] == "10.1109/JBHI.2021.3138024"
    assert {"nuclei", "segmentation", "2d", "onnx"} <= set(rdf["tags"])
    assert rdf["weights"]["onnx"]["opset_version"] == 17
    assert set(rdf["weights"]) == {"onnx", "torchscript"}
    [image], [probability] = rdf["inputs"], rdf["outputs"]
    assert image["id"] == "image" and image["data"]["type"] == "uint8"
    assert [a["type"] for a in image["axes"]] == ["batch", "channel", "space", "space"]
    assert image["axes"][1]["channel_names"] == ["r", "g", "b"]
    assert probability["axes"][2]["size"] == {"tensor_id": "image", "axis_id": "y"}
    x, y = np.load(package / "test_input.npy"), np.load(package / "test_output.npy")
    assert x.dtype == np.uint8 and x.shape == (1, 3, 256, 256) and 0 < x.mean() < 255
    assert y.dtype == np.float32 and y.shape == (1, 1, 256, 256)
    assert 0.02 < (y >= 0.5).mean() < 0.6  # a real image with nuclei, not an empty prediction
    readme = (package / "README.md").read_text()
    for words in (
        "## Validation",
        "256×256",
        "not keeping the aspect ratio",
        "uint8 RGB",
        "CC0",
        "0.9176",
        "≥ **0.5**",
        "## Model card",
    ):
        assert words in readme, words
    assert (package / "cover.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bioimageio_test_passes_offline(package, no_network):
    from bioimageio.core import test_model

    start = time.perf_counter()
    summary = test_model(package)
    print(f"bioimageio test_model: {summary.status} in {time.perf_counter() - start:.1f} s")
    assert summary.status == "passed", summary.format()
    tested = " ".join(d.name for d in summary.details)
    assert "(onnx)" in tested and "(torchscript)" in tested
    assert not no_network


@pytest.fixture(scope="module")
def zip_package(onnx_file, shipped, tmp_path_factory):
    """An ONNX-only .zip package written over an earlier package of ours (``overwrite``): a zip
    that msrf recorded in its folder's manifest."""
    out = tmp_path_factory.mktemp("zip") / "msrfnet.zip"
    earlier = io.BytesIO()
    with zipfile.ZipFile(earlier, "w") as z:
        z.writestr("rdf.yaml", f"name: {NAMES[True]}\n")
    OutputFolder(out.parent, "msrf export --bioimageio").write_bytes(out.name, earlier.getvalue())
    with pytest.raises(MSRFError, match="pass --overwrite"):
        package_bioimageio(onnx_file, out, weights_path=SHIPPED_WEIGHTS, config=shipped[1])
    package_bioimageio(
        onnx_file,
        out,
        weights_path=SHIPPED_WEIGHTS,
        config=shipped[1],
        torchscript=False,
        overwrite=True,
    )
    return out


def test_zip_replaces_an_earlier_package(zip_package):
    # no temp folder; the zip is recorded in the folder's manifest as any export
    assert sorted(p.name for p in zip_package.parent.iterdir()) == [MANIFEST, "msrfnet.zip"]
    assert OutputFolder(zip_package.parent, "msrf export").state("msrfnet.zip") == "ours"
    with zipfile.ZipFile(zip_package) as z:
        names = set(z.namelist())
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert set(FILES) - {"msrfnet.pt"} <= names and "msrfnet.pt" not in names
    assert set(rdf["weights"]) == {"onnx"} and rdf["name"] == NAMES[True]


@pytest.mark.slow  # ~1 min on 2 cores: the same checks as test_model, through the CLI
def test_bioimageio_cli_passes_on_the_zip(zip_package):
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "bioimageio.core", "test", str(zip_package)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"bioimageio test (CLI, zip): rc {run.returncode} in {time.perf_counter() - start:.1f} s")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]


def test_refuses_an_existing_folder_it_did_not_write(tmp_path, shipped):
    user = tmp_path / "results"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(MSRFError, match="results: exists and is not an msrf bioimage.io"):
            package_bioimageio(
                tmp_path / "none.onnx",
                user,
                weights_path=SHIPPED_WEIGHTS,
                config=shipped[1],
                overwrite=overwrite,
            )
    assert [p.name for p in user.iterdir()] == ["notes.txt"]


def test_missing_bioimageio_is_one_line(monkeypatch, tmp_path, shipped):
    monkeypatch.setitem(sys.modules, "bioimageio.spec.model.v0_5", None)
    needs = r"needs bioimageio.core: pip install -e '\.\[bioimageio\]'"
    with pytest.raises(MSRFError, match=needs):
        package_bioimageio(
            tmp_path / "m.onnx", tmp_path / "out", weights_path=SHIPPED_WEIGHTS, config=shipped[1]
        )


def test_a_foreign_zip_is_refused_even_with_overwrite(tmp_path, shipped):
    """Not in the folder's manifest: a user's zip, whatever its rdf.yaml says."""
    out = tmp_path / "pkg.zip"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("rdf.yaml", f"name: {NAMES[True]}\n")
    before = out.read_bytes()
    with pytest.raises(MSRFError, match="pkg.zip: exists and is a file msrf did not write"):
        package_bioimageio(
            tmp_path / "none.onnx",
            out,
            weights_path=SHIPPED_WEIGHTS,
            config=shipped[1],
            overwrite=True,
        )
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["pkg.zip"]


def test_the_folder_package_may_be_replaced_with_overwrite(package, tmp_path):
    """Every file of a real package is one :data:`PACKAGE_FILES` allows: a re-run with
    ``--overwrite`` replaces it, one without refuses naming the option."""
    copy = shutil.copytree(package, tmp_path / "pkg")
    check_destination(copy, "bioimageio", overwrite=True)
    with pytest.raises(MSRFError, match=r"pkg: exists \(an earlier msrf .* pass --overwrite"):
        check_destination(copy, "bioimageio", option="--bioimageio")


def test_cli_rerun_refuses_before_exporting_and_the_zip_is_in_the_manifest(
    onnx_file, tmp_path, capsys, monkeypatch
):
    """A re-run of ``msrf export --bioimageio pkg.zip`` refused only after the export, said "pass
    overwrite", had not recorded pkg.zip in the manifest, and printed the weights line twice
    ("shipped weights", then "--weights").

    The first run's ONNX graph is the module's (the same export of the same shipped weights,
    copied instead of traced again: the test is about the command's order, messages and
    manifest; every other step of it runs)."""
    import msrfnet.export.onnx as onnx_export

    def copy_graph(job, tmp):
        shutil.copyfile(onnx_file, tmp)
        return "copied", 0.0

    monkeypatch.setattr(onnx_export, "_write_single_input", copy_graph)
    out = tmp_path / "pkg.zip"
    args = ["export", "--bioimageio", str(out)]  # no --weights: the shipped ones
    with said() as lines:
        assert main(args) == 0
    assert [line for line in lines if line.startswith("weights:")] == [
        f"weights: {SHIPPED_WEIGHTS} (shipped weights)"
    ]
    [record] = [json.loads(line) for line in (out.parent / MANIFEST).read_text().splitlines()]
    assert record["file"] == "pkg.zip" and record["command"] == "msrf export --bioimageio"
    assert OutputFolder(out.parent, "msrf export").state("pkg.zip") == "ours"
    with zipfile.ZipFile(out) as z:
        assert yaml.safe_load(z.read("rdf.yaml"))["name"] == NAMES[True]
    capsys.readouterr()

    def never(*args, **kwargs):
        pytest.fail("exported before the destination was checked")

    monkeypatch.setattr("msrfnet.export.onnx.export_onnx", never)
    assert main(args) == 2
    out_text, err = capsys.readouterr()
    assert "Traceback" not in out_text + err and len(err.strip().splitlines()) == 1
    assert err.strip() == (
        f"msrf export: error: {out}: exists (written by an earlier msrf run); "
        "pass --overwrite to replace the earlier outputs"
    )
