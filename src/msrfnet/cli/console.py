"""How ``msrf`` talks to the terminal: argument errors as one line, the commands' log messages on
stdout and stderr, and a stdout whose reader has gone (``msrf test | head -2``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import IO, NoReturn

__all__ = ["Parser", "ConsoleHandler", "setup_logging", "discard_output"]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the option, exit 2, e.g.
    ``msrf train: error: argument --epochs: must be a positive whole number, got '0' (see msrf
    train --help)``.

    Stock argparse prints the whole usage block first (7-15 lines for ``msrf train``), which buries
    the one line that says what is wrong. ``add_subparsers`` makes its subcommands with
    ``type(self)``, so setting this class on the top-level parser covers every subcommand.

    No abbreviations (``allow_abbrev=False``, on every parser made by this class): stock argparse
    takes ``--epoch 2`` silently as ``--epochs 2``, and an abbreviation that works today breaks
    (or changes meaning) the day an option with the same prefix is added. A misspelt option is
    ``unrecognized arguments: --epoch 2``.
    """

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` on stderr and exit 2 (no usage)."""
        line = message.replace("\n", " ").strip()
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse, but an unknown option is reported by the subcommand it was given to
        (``msrf train: error: unrecognized arguments: --epoch``), not by the top-level ``msrf``:
        argparse collects the leftovers of every level and only the top level complains."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self._command_parser(namespace).error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def _command_parser(self, namespace: argparse.Namespace) -> argparse.ArgumentParser:
        """The subcommand's parser named in ``namespace``, else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(namespace, action.dest or "", None)
                if chosen in action.choices:
                    return action.choices[chosen]
        return self


def discard_output(stream: IO[str]) -> None:
    """Point ``stream``'s file descriptor at ``os.devnull`` once its reader has gone.

    After a ``BrokenPipeError`` every later write (and the flush at interpreter exit, which would
    print ``Exception ignored ... BrokenPipeError``) fails again; on ``/dev/null`` they succeed and
    the run ends quietly. A stream without a descriptor (a test's capture) is left as it is.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class ConsoleHandler(logging.StreamHandler):
    """The commands' messages: INFO lines to whatever ``sys.stdout`` is at the time, warnings and
    errors to ``sys.stderr`` (tests swap them between calls; ``msrf bench --json`` points stdout
    at stderr). ``stream`` is stderr, so that tqdm's logging redirect recognises the handler.

    When the reader of stdout has gone (``msrf test | head -2``) the rest of the messages are
    dropped and the command carries on, its files still written: no ``--- Logging error ---``
    traceback per message (logging's ``handleError``)."""

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
        out = sys.stdout
        try:
            out.write(self.format(record) + self.terminator)
            out.flush()
        except BrokenPipeError:
            discard_output(out)
        except Exception:
            self.handleError(record)


def setup_logging() -> None:
    """INFO and above of the ``msrfnet`` loggers to the console (once), Lightning's chatter off."""
    pkg = logging.getLogger("msrfnet")
    pkg.setLevel(logging.INFO)
    if not any(isinstance(h, ConsoleHandler) for h in pkg.handlers):
        handler = ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        pkg.addHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
