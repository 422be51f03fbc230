"""The ``msrf`` command: argument parsing only; each subcommand calls one typed function.

One module per group of subcommands (``train``; ``infer``: test, predict, evaluate; ``tools``:
check-data, split, export, bench, serve), the flags they share in ``flags``. Heavy imports (torch,
Lightning) happen inside the subcommands so ``msrf --help`` is instant. A bad option prints one
line naming it and exits 2 (:class:`~msrfnet.cli.console.Parser`: no usage block). User errors
(:class:`~msrfnet.errors.MSRFError`) print as lines with no traceback and exit 2; ``--debug``
shows the traceback. A reader that closes stdout early (``msrf test | head -2``) ends the output
quietly, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from msrfnet.cli import infer, tools
from msrfnet.cli import train as train_cmd
from msrfnet.cli.console import Parser, discard_output, setup_logging
from msrfnet.cli.train import DEMO
from msrfnet.errors import MSRFError
from msrfnet.version import __version__

__all__ = ["DEMO", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``msrf`` parser and its subcommands, all :class:`Parser` (one-line errors)."""
    p = Parser(
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


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status. A bad option exits 2 from the parser (SystemExit)."""
    # A CLI process, not a library: a handler that cannot write drops the message (the Python
    # docs' advice for production) rather than printing a traceback per message.
    logging.raiseExceptions = False
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    setup_logging()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
        return code
    except BrokenPipeError:
        # The reader of stdout has gone (msrf test | head -2): stop quietly, exit 1.
        discard_output(sys.stdout)
        if args.debug:
            raise
        return 1
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
