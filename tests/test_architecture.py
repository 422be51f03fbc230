"""The architecture is enforced: import-linter's contracts (pyproject.toml: wings point down, no
cycles) hold, and ruff finds nothing (lint and format) in the code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    pytest.importorskip("importlinter")
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is installed without its lint-imports command"
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]])
def test_ruff_is_clean(args):
    pytest.importorskip("ruff")
    paths = ["src", "tests", "tools", "benchmarks", "train.py", "test.py"]
    run = subprocess.run(
        [sys.executable, "-m", "ruff", *args, *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
