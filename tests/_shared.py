"""Locate the shared fixtures (``/work/shared`` next to the repository) for the tests.

The fixtures live outside the repository (``../shared`` relative to its root). A test that needs
one calls :func:`require_fixture`: without the file it is skipped with the reason, except in CI
(environment variable ``CI`` set, e.g. ``CI=true``), where a missing fixture is a failure, so a
broken checkout cannot pass by skipping. ``MSRF_SHARED`` overrides the location.

``tests/`` is not a package: import as ``from _shared import require_fixture`` (pytest puts the
test directory on ``sys.path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

KERAS_REFERENCE = "fixtures/keras_reference/msrf_keras_reference.npz"


def shared_dir() -> Path:
    """``$MSRF_SHARED`` if set, else the ``shared`` folder beside the repository root."""
    env = os.environ.get("MSRF_SHARED")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1].parent / "shared"


def in_ci() -> bool:
    """True when ``CI`` is set to anything but an explicit false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_fixture(relpath: str = KERAS_REFERENCE) -> Path:
    """The path of ``shared/<relpath>``; skip the test if it is missing (fail under CI)."""
    path = shared_dir() / relpath
    if path.exists():
        return path
    reason = (
        f"fixture {relpath} not found under {shared_dir()} (set MSRF_SHARED to the shared folder)"
    )
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so the fixture must be present", pytrace=False)
    pytest.skip(reason)
