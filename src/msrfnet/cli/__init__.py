"""The ``msrf`` command: argument parsing only; each subcommand calls one typed function.

One module per group of subcommands (``train``; ``infer``: test, predict, evaluate; ``tools``:
check-data, split, export, bench, serve), the flags they share in ``flags``. Heavy imports (torch,
Lightning) happen inside the subcommands so ``msrf --help`` is instant. User errors
(:class:`~msrfnet.errors.MSRFError`) print as lines with no traceback and exit 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from msrfnet.cli import infer, tools
from msrfnet.cli import train as train_cmd
from msrfnet.cli.train import DEMO, _explicit  # noqa: F401 - used by tests and the README
from msrfnet.errors import MSRFError
from msrfnet.version import __version__

__all__ = ["DEMO", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msrf", description="MSRF-Net: train, test and apply it to 2D biomedical images."
    )
    p.add_argument("--version", action="version", version=f"msrfnet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    train_cmd.add_train(sub)
    infer.add_test(sub)
    infer.add_predict(sub)
    infer.add_evaluate(sub)
    tools.add_check_data(sub)
    tools.add_split(sub)
    tools.add_export(sub)
    tools.add_bench(sub)
    tools.add_serve(sub)
    return p


class _ConsoleHandler(logging.StreamHandler):
    """The commands' messages: INFO lines to whatever ``sys.stdout`` is at the time, warnings and
    errors to ``sys.stderr`` (tests swap them between calls; ``msrf bench --json`` points stdout
    at stderr). ``stream`` is stderr, so that tqdm's logging redirect recognises the handler."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            super().emit(record)
            return
        try:
            sys.stdout.write(self.format(record) + self.terminator)
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def _setup_logging() -> None:
    pkg = logging.getLogger("msrfnet")
    pkg.setLevel(logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in pkg.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        pkg.addHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    _setup_logging()
    try:
        return int(args.func(args) or 0)
    except MSRFError as e:
        if args.debug:
            raise
        for line in str(e).splitlines():
            print(f"msrf {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"msrf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
