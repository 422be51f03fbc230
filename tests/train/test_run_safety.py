"""Training never damages a run (issue 11, items 3, 4, 6, 7): run folders are created atomically
and never shared (two real processes at once), ``--resume`` checks every override before it writes
anything, ``config.yaml`` is replaced atomically, I/O errors during training are one line naming
the path and the cause, and a training that produced nothing fails."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
import yaml
from _train_helpers import real_subset, train_args

from msrfnet.cli import main
from msrfnet.config import Config
from msrfnet.errors import MSRFError
from msrfnet.train import fit


def _stamp(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).digest()


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: (mtime, SHA-256) — what a refused command must leave alone."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): _stamp(p) for p in files}


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("msrf train: error:")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return real_subset(tmp_path_factory.mktemp("kdsb"), {"train": 2, "val": 1, "test": 1})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished 1-epoch run at 16² (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(train_args(data, out, "one", epochs=1, size=16)) == 0
    return out / "one"


# --- item 3: run folders --------------------------------------------------------------------------
def _make_run_dir(out: str, name: str | None, start, results) -> None:
    start.wait()  # every process calls new_run_dir at the same moment
    try:
        results.put(str(fit.new_run_dir(Config(out=out, name=name))))
    except MSRFError as e:
        results.put(f"refused: {e}")


def _race(out: Path, name: str | None, n: int = 4) -> list[str]:
    ctx = multiprocessing.get_context("fork")  # the children share this process's patched fit
    start, results = ctx.Barrier(n), ctx.Queue()
    args = (str(out), name, start, results)
    procs = [ctx.Process(target=_make_run_dir, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_runs_started_together_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(fit, "_default_run_name", lambda: "msrf-20260101-120000")  # the same second
    got = _race(tmp_path, None)
    base = "msrf-20260101-120000"
    assert sorted(Path(g).name for g in got) == [base, f"{base}-2", f"{base}-3", f"{base}-4"]
    assert all(Path(g).is_dir() and not any(Path(g).iterdir()) for g in got)


def test_runs_started_together_with_one_name_get_one_folder_and_refusals(tmp_path):
    got = _race(tmp_path, "sweep")
    assert got.count(str(tmp_path / "sweep")) == 1
    refused = [g for g in got if g.startswith("refused: ")]
    assert len(refused) == 3 and all(f"{tmp_path / 'sweep'}: already exists" in g for g in refused)


def test_a_taken_default_name_gets_the_next_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr(fit, "_default_run_name", lambda: "msrf-x")
    (tmp_path / "msrf-x").mkdir()
    (tmp_path / "msrf-x-2").mkdir()
    assert fit.new_run_dir(Config(out=str(tmp_path))) == tmp_path / "msrf-x-3"


def test_an_existing_name_is_refused_and_left_alone(data, tmp_path, capsys):
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's")
    before = snapshot(tmp_path / "runs")
    assert main(train_args(data, tmp_path / "runs", "mine")) == 2
    assert error_lines(capsys) == [
        f"msrf train: error: {mine}: already exists; choose another "
        "--name (msrf never writes into an existing folder)"
    ]
    assert snapshot(tmp_path / "runs") == before


def test_out_that_is_a_file_or_read_only_is_one_line(data, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(train_args(data, tmp_path / "f", "r")) == 2
    assert error_lines(capsys) == [
        f"msrf train: error: --out {tmp_path / 'f'}: is a file, not a folder for run directories"
    ]
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        assert main(train_args(data, tmp_path / "ro", "r")) == 2
        assert error_lines(capsys) == [
            f"msrf train: error: --out {tmp_path / 'ro'}: cannot write (the folder is read-only)"
        ]
        assert not any((tmp_path / "ro").iterdir())
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_a_permission_error_creating_the_run_folder_is_one_line(tmp_path, monkeypatch):
    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(MSRFError, match=r"cannot create the folder for runs \(permission denied"):
        fit.new_run_dir(Config(out=str(tmp_path / "new"), name="r"))


# --- item 4: resume ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag,value,field",
    [
        ("--variant", "clean", "variant"),
        ("--image-size", "32", "image_size"),
        ("--lr", "0.01", "lr"),
        ("--seed", "7", "seed"),
        ("--mask-threshold", "5", "mask_threshold"),
        ("--canny-low", "20", "canny_low"),
        ("--schedule", "cosine", "schedule"),
        ("--name", "other", "name"),
        ("--augment", None, "augment"),
    ],
)
def test_resume_refuses_an_incompatible_override_before_writing(
    trained, flag, value, field, capsys
):
    before = snapshot(trained)
    argv = ["train", "--resume", str(trained), "--epochs", "3", flag] + ([value] if value else [])
    assert main(argv) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith(f"msrf train: error: {field}: cannot change when resuming")
    assert snapshot(trained) == before


def test_resume_with_nothing_left_to_train_is_refused(trained, capsys):
    before = snapshot(trained)
    assert main(["train", "--resume", str(trained), "--workers", "0"]) == 2
    assert error_lines(capsys) == [
        f"msrf train: error: {trained}: 1 of 1 epochs are done, nothing "
        "to resume; give more --epochs"
    ]
    assert snapshot(trained) == before


def test_resume_may_change_how_it_runs(trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    assert (
        main(
            [
                "train",
                "--resume",
                str(run),
                "--epochs",
                "2",
                "--no-subpixel",
                "--precision",
                "32",
                "--workers",
                "0",
                "--batch-size",
                "1",
            ]
        )
        == 0
    )
    saved = Config.load(run / "config.yaml")
    assert (saved.epochs, saved.subpixel, saved.precision, saved.batch_size) == (2, False, "32", 1)
    assert not list(run.rglob(".*.tmp"))


@pytest.mark.parametrize(
    "text,problem",
    [
        ("epochs: [1\n", "not valid YAML"),
        ("- a\n- b\n", "not a config (a YAML list"),
        ("epochs: ten\n", "epochs: must be a whole number"),
        ("variant: 3\n", "variant: must be one of"),
        ("\xff\xfe garbage", None),
    ],
)
def test_a_corrupt_config_yaml_on_resume_is_one_line_naming_it(
    trained, tmp_path, text, problem, capsys
):
    run = shutil.copytree(trained, tmp_path / "run")
    path = run / "config.yaml"
    path.write_bytes(text.encode("latin-1"))
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"msrf train: error: {path}: ")
    assert problem is None or problem in lines[0]
    assert snapshot(run) == before


def test_a_config_yaml_that_disagrees_with_its_checkpoint_is_refused(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "variant": "clean"}))
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    lines = error_lines(capsys)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert len(lines) == 1
    assert lines[0].startswith(f"msrf train: error: {ckpt}: variant: cannot change when resuming")
    assert snapshot(run) == before


def test_config_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    Config(epochs=3).save(path)
    before = path.read_bytes()

    def half_written(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_written)
    with pytest.raises(OSError):
        Config(epochs=9).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


# --- item 6: I/O errors during training ------------------------------------------------------
def _no_temp_files(run: Path) -> bool:
    return not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]


def test_disk_full_writing_the_checkpoint_is_one_line(data, tmp_path, monkeypatch, capsys):
    def full(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("msrfnet.train.callbacks.save_torch", full)
    assert main(train_args(data, tmp_path, "full", epochs=1, size=16)) == 2
    ckpt = tmp_path / "full" / "checkpoints" / "last.ckpt"
    assert error_lines(capsys) == [
        f"msrf train: error: {ckpt}: cannot write (no space left on device)"
    ]
    assert not ckpt.exists() and _no_temp_files(tmp_path / "full")


def test_permission_denied_writing_the_weights_is_one_line(data, tmp_path, monkeypatch, capsys):
    def denied(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", denied)
    assert main(train_args(data, tmp_path, "ro", epochs=1, size=16)) == 2
    weights = tmp_path / "ro" / "last.safetensors"
    assert error_lines(capsys) == [
        f"msrf train: error: {weights}: cannot write (permission denied)"
    ]
    assert not weights.exists() and _no_temp_files(tmp_path / "ro")


def test_any_other_io_error_during_training_is_one_line(data, tmp_path, monkeypatch, capsys):
    def full(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("msrfnet.train.callbacks.plot_curves", full)
    assert main(train_args(data, tmp_path, "c", epochs=1, size=16)) == 2
    curves = tmp_path / "c" / "curves.png"
    assert error_lines(capsys) == [
        f"msrf train: error: {curves}: cannot write (no space left on device)"
    ]


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_save_torch_reports_a_real_full_disk_as_enospc():
    import torch

    from msrfnet.weights.checkpoint import save_torch

    with pytest.raises(OSError) as full:
        save_torch({"w": torch.zeros(1 << 18)}, "/dev/full")  # torch.save alone: "unexpected pos"
    assert full.value.errno == errno.ENOSPC


# --- item 5: a training that produced nothing fails ------------------------------------------
def test_a_training_without_an_optimizer_step_fails(data, tmp_path, capsys):
    assert main(train_args(data, tmp_path, "t", "--max-minutes", "30", epochs=1, size=16)) == 0
    run = tmp_path / "t"
    # resumed with a time budget that the first run already used up: Lightning stops before a step
    assert (
        main(
            [
                "train",
                "--resume",
                str(run),
                "--epochs",
                "3",
                "--max-minutes",
                "0.0001",
                "--workers",
                "0",
            ]
        )
        == 2
    )
    assert error_lines(capsys) == [
        f"msrf train: error: {run}: no training step ran (the "
        "--max-minutes 0.0001 budget is used up); nothing was trained"
    ]


def test_no_weights_line_without_weights(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("msrfnet.train.callbacks.WeightsExport.on_validation_end", lambda *a: None)
    assert main(train_args(data, tmp_path, "nw", epochs=1, size=16)) == 2
    out, err = capsys.readouterr()
    assert "weights:" not in out and "Traceback" not in err
    assert (
        f"{tmp_path / 'nw'}: training stopped before its first validation; no weights were written"
    ) in err


# --- item 7: corrupt weights metadata ----------------------------------------------------------
@pytest.mark.parametrize(
    "meta,problem",
    [
        ({"config": "{not json"}, "'config' is not valid JSON"),
        ({"config": "[1, 2]"}, "'config' is a JSON list"),
        ({"metrics": "nan nan"}, "'metrics' is not valid JSON"),
        ({"num_classes": "two"}, "num_classes: must be"),
        (
            {"config": json.dumps({"image_size": 30})},
            "image_size: must be a positive multiple of 8",
        ),
        ({"variant": "fancy"}, "variant: must be one of"),
    ],
)
def test_malformed_weights_metadata_is_one_line_naming_the_file(tmp_path, meta, problem, capsys):
    import torch
    from safetensors.torch import save_file

    from msrfnet.weights.checkpoint import read_checkpoint

    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "msrfnet", **meta})
    with pytest.raises(MSRFError) as bad:
        read_checkpoint(path)
    message = str(bad.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert main(["test", "--weights", str(path), "--out", str(tmp_path / "t")]) == 2
    assert "Traceback" not in capsys.readouterr().err
