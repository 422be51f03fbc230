"""What ``msrf`` prints when something is off: a bad option is one line on stderr naming it (no
usage block), exit 2; a reader that closes stdout early gets no tracebacks; every option says in
``--help`` what it does."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from msrfnet.cli import build_parser, main
from msrfnet.data import sample_root


def exit_code(argv: list[str]) -> int:
    """main()'s exit status: its return value, or the code of the parser's SystemExit."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


BAD = [
    (["train", "--epochs", "0"], "msrf train", "--epochs"),
    (["train", "--lr", "nan"], "msrf train", "--lr"),
    (["predict", "x", "--threshold", "2"], "msrf predict", "--threshold"),
    (["test", "--tile", "60"], "msrf test", "--tile"),
    (["test", "--overlap", "1"], "msrf test", "--overlap"),
    (["bench", "--device", "tpu"], "msrf bench", "--device"),
    (["split", "src"], "msrf split", "--out"),  # a required option missing
    (["nonsense"], "msrf", "nonsense"),
    (["train", "--bogus"], "msrf train", "--bogus"),  # named by the subcommand it was given to
    # no prefix matching: --epoch is not --epochs, --vers is not --version (issue 20)
    (["train", "--epoch", "2"], "msrf train", "unrecognized arguments: --epoch 2"),
    (["predict", "x", "--thresh", "0.3"], "msrf predict", "unrecognized arguments: --thresh"),
    (["--vers"], "msrf", "unrecognized arguments: --vers"),
]


@pytest.mark.parametrize(("argv", "prog", "name"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_a_bad_argument_is_one_line_naming_it(argv, prog, name, capsys):
    assert exit_code(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    line = lines[0]
    assert line.startswith(f"{prog}: error: ") and name in line
    assert line.endswith(f"(see {prog} --help)")
    assert "usage:" not in err and "Traceback" not in err


def test_every_subcommand_parser_has_the_one_line_errors():
    """add_subparsers makes the subcommands with type(parser): the override reaches them all."""
    top = build_parser()
    for name, parser in _subcommands(top).items():
        assert type(parser) is type(top), name
    assert type(top) is not argparse.ArgumentParser


def test_no_parser_takes_an_abbreviated_option_but_full_names_still_work():
    top = build_parser()
    parsers = {"msrf": top, **_subcommands(top)}
    assert [name for name, p in parsers.items() if p.allow_abbrev] == []
    args = top.parse_args(["train", "--epochs=3", "--batch-size", "2"])
    assert (args.command, args.epochs, args.batch_size) == ("train", 3, 2)


def test_help_still_prints_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: msrf train") and "--epochs" in out


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_and_argument_has_help():
    top = build_parser()
    missing = []
    for name, parser in {"msrf": top, **_subcommands(top)}.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_subcommand_has_a_summary_and_export_names_its_formats():
    top = build_parser()
    (action,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in action._choices_actions}
    assert set(summaries) == set(action.choices) and all(summaries.values())
    assert all(word in summaries["export"] for word in ("ONNX", ".pt2", "bioimage.io"))


def test_help_states_the_real_defaults():
    """The defaults the help texts quote are the parser's (a changed default shows here)."""
    subs = _subcommands(build_parser())
    checked = {
        ("export", "--out"): "msrfnet.onnx",
        ("export", "--opset"): "17",
        ("split", "--val"): "0.1",
        ("split", "--test"): "0.1",
        ("split", "--seed"): "42",
        ("test", "--threshold"): "0.5",
        ("test", "--batch-size"): "8",
        ("predict", "--threshold"): "0.5",
        ("predict", "--batch-size"): "8",
    }
    for (command, option), default in checked.items():
        (action,) = [a for a in subs[command]._actions if option in a.option_strings]
        assert str(action.default) == default and f"default {default}" in action.help.replace(
            "default: ", "default "
        ), (command, option)


# --- a reader that closes stdout early (msrf ... | head) ----------------------------------------


def _run_with_reader_gone(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m msrfnet.cli ARGV`` with stdout a pipe whose reader is already closed, as
    when ``head`` has exited: every write to stdout fails with EPIPE, deterministically (reading a
    line first would race the child's later writes)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "msrfnet.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    return proc


def _assert_quiet(stderr: str) -> None:
    for word in ("Traceback", "Logging error", "BrokenPipeError", "Exception ignored"):
        assert word not in stderr, stderr


def test_a_closed_stdout_stops_a_printing_command_without_a_traceback():
    """check-data prints its report: the failed print ends the run, exit 1, nothing on stderr."""
    proc = _run_with_reader_gone(["check-data", str(sample_root())])
    _assert_quiet(proc.stderr)
    assert proc.stderr == ""
    assert proc.returncode == 1


def test_a_closed_stdout_drops_the_log_lines_and_the_command_finishes(tmp_path):
    """evaluate logs its table and results line: with nobody reading them they are dropped (no
    ``--- Logging error ---`` per line) and the files are still written."""
    masks = sample_root() / "test" / "masks"
    proc = _run_with_reader_gone(["evaluate", str(masks), str(masks), "--out", str(tmp_path / "e")])
    _assert_quiet(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_normal_output_still_reaches_stdout(tmp_path):
    """The control: with a reader, the same command prints its table and results line."""
    masks = sample_root() / "test" / "masks"
    proc = subprocess.run(
        [sys.executable, "-m", "msrfnet.cli", "evaluate", str(masks), str(masks)]
        + ["--out", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DSC" in proc.stdout and "results:" in proc.stdout
    _assert_quiet(proc.stderr)
