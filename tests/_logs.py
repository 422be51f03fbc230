"""What msrfnet says: its functions log their messages to the ``msrfnet`` logger (the CLI prints
them); :func:`said` collects them in tests, in any fixture scope (pytest's ``caplog`` is
function-scoped)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def said(level: int = logging.INFO) -> Iterator[list[str]]:
    """The messages the ``msrfnet`` logger emits at ``level`` or above inside the block."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("msrfnet")
    handler, old = Collect(level), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old) if old else level)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
