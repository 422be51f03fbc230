"""``msrf predict`` keeps going: an unreadable image is named and skipped, the others written, a
summary names the skipped ones and the exit status is 1 (2 when nothing was written, or at the
first with ``--strict``); an interrupted run resumes with ``--skip-existing``; a progress bar."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
from _data_helpers import blob_pair, save
from _model_helpers import make_weights

import msrfnet.safe_output as so
from msrfnet.cli import main
from msrfnet.safe_output import MANIFEST


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=16)


def _images(folder: Path, n: int) -> list[Path]:
    return [save(folder / f"img{i}.png", blob_pair(24, 32, seed=i)[0]) for i in range(n)]


def _masks(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.png"))


def _unreadable(monkeypatch, path: Path) -> None:
    """``path`` cannot be opened (as a file without read permission; tests run as root here)."""
    real = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_unreadable_images_are_skipped_and_counted(weights, tmp_path, capsys, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    _images(folder, 4)
    corrupt = folder / "bad.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    locked = save(folder / "locked.png", blob_pair(24, 32, seed=9)[0])
    _unreadable(monkeypatch, locked)
    code = main(
        ["predict", str(folder), "--weights", str(weights), "--out", str(out), "--batch-size", "2"]
    )
    stdout, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in stdout + err
    lines = err.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"skipped {corrupt}: corrupt or truncated image")
    assert lines[1] == f"skipped {locked}: cannot read the file (permission denied)"
    assert lines[2].startswith("msrf predict: error: 2 of 6 image(s) could not be read")
    assert str(corrupt) in lines[2] and str(locked) in lines[2] and "4 mask(s) written" in lines[2]
    assert _masks(out) == [f"img{i}.png" for i in range(4)]
    assert "wrote 4 mask(s)" in stdout


def test_nothing_readable_is_not_a_success(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"not an image")
    assert main(["predict", str(folder), "--weights", str(weights), "--out", str(out)]) == 2
    stdout, err = capsys.readouterr()
    assert "wrote" not in stdout and not out.exists()
    assert err.splitlines()[-1].startswith("msrf predict: error: 2 of 2 image(s) could not be read")


def test_strict_stops_at_the_first(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    _images(folder, 3)
    (folder / "img1.png").write_bytes(b"not an image")
    assert (
        main(["predict", str(folder), "--weights", str(weights), "--out", str(out), "--strict"])
        == 2
    )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"msrf predict: error: {folder / 'img1.png'}: ")


def _interrupt_at(monkeypatch, call: int) -> None:
    """A Ctrl-C in the middle of the ``call``-th output file (after half its bytes)."""
    real, count = so.write_data, [0]

    def write(path, data):
        count[0] += 1
        if count[0] == call:
            Path(path).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(so, "write_data", write)


def test_an_interrupted_run_resumes_with_skip_existing(weights, tmp_path, capsys, monkeypatch):
    """Interrupted in the overlay of the second image: the files in place are complete and listed,
    the resumed run predicts only what is missing (and the mask of the half-done image), and the
    result equals an uninterrupted run's."""
    folder, out = tmp_path / "in", tmp_path / "out"
    _images(folder, 4)
    args = ["predict", str(folder), "--weights", str(weights), "--overlay", "--batch-size", "1"]
    _interrupt_at(monkeypatch, 4)  # img0 mask, img0 overlay, img1 mask, img1 overlay <- Ctrl-C
    assert main([*args, "--out", str(out)]) == 130
    in_place = sorted(p.name for p in out.iterdir())
    assert in_place == [MANIFEST, "img0.png", "img0_overlay.png", "img1.png"]
    kept = {name: (out / name).stat().st_mtime_ns for name in ("img0.png", "img0_overlay.png")}
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--skip-existing"]) == 0
    stdout = capsys.readouterr().out
    assert "wrote 3 mask(s) + overlays" in stdout and "kept 1 earlier" in stdout
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # img0 untouched
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    for name in [f"img{i}{s}.png" for i in range(4) for s in ("", "_overlay")]:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_skip_existing_reports_what_it_kept(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    images = _images(folder, 3)
    assert main(["predict", str(images[0]), "--weights", str(weights), "--out", str(out)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(folder),
                "--weights",
                str(weights),
                "--out",
                str(out),
                "--skip-existing",
            ]
        )
        == 0
    )
    assert "wrote 2 mask(s)" in capsys.readouterr().out
    assert _masks(out) == ["img0.png", "img1.png", "img2.png"]


def test_skip_existing_never_mixes_weights_or_options(weights, tmp_path, capsys):
    """Outputs kept by --skip-existing must come from the same model file and output options: a
    resumed run with other weights, another threshold or tiling is refused in one line and leaves
    the earlier masks as they were (--overwrite replaces them)."""
    folder, out = tmp_path / "in", tmp_path / "out"
    images = _images(folder, 2)
    other = make_weights(tmp_path / "other.safetensors", image_size=16, seed=1)
    base = ["predict", "--out", str(out)]
    assert main([*base, str(images[0]), "--weights", str(weights)]) == 0
    before = (out / "img0.png").read_bytes()
    capsys.readouterr()
    for change in (
        ["--weights", str(other)],
        ["--weights", str(weights), "--threshold", "0.3"],
        ["--weights", str(weights), "--tile", "16"],
    ):
        assert main([*base, str(folder), *change, "--skip-existing"]) == 2, change
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "img0.png: written by an earlier msrf run with other" in err
        assert _masks(out) == ["img0.png"] and (out / "img0.png").read_bytes() == before
    assert main([*base, str(folder), "--weights", str(other), "--overwrite"]) == 0
    assert main([*base, str(folder), "--weights", str(other), "--skip-existing"]) == 0
    assert "kept 2 earlier" in capsys.readouterr().out


def test_progress_bar_over_files_on_a_terminal(weights, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    _images(folder, 3)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert (
        main(
            [
                "predict",
                str(folder),
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "out"),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "msrf predict" in err and "3/3" in err and "image" in err


def test_a_link_that_loops_is_named_like_any_unreadable_input(weights, tmp_path, capsys):
    """``a.png -> b -> a.png`` among the images: named, skipped, counted, exit 1; given alone,
    its own one-line error, exit 2."""
    folder, out = tmp_path / "in", tmp_path / "out"
    _images(folder, 2)
    (folder / "a.png").symlink_to("b")
    (folder / "b").symlink_to("a.png")
    why = f"{folder / 'a.png'}: cannot read the file (a symbolic link that loops)"
    assert main(["predict", str(folder), "--weights", str(weights), "--out", str(out)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"skipped {why}"
    assert lines[1].startswith("msrf predict: error: 1 of 3 image(s) could not be read")
    assert str(folder / "a.png") in lines[1] and "2 mask(s) written" in lines[1]
    assert _masks(out) == ["img0.png", "img1.png"]
    alone = ["predict", str(folder / "a.png"), "--weights", str(weights), "--out", str(out)]
    assert main([*alone, "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == f"msrf predict: error: {why}"
