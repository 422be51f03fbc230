"""The tests mirror the package (tests/model, tests/data, … like src/msrfnet/model, …); the
shared helpers (``_shared``, ``_model_helpers``, ``_model_tester``, …) stay here, importable from
every sub-folder."""

import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture()
def one_thread():
    """One intra-op thread for a heavy CPU test: on 2 shared cores, 2 threads ran the overfit loop
    4x slower than 1 as soon as another process competed (measured: 2.85 vs 0.65 s per step; the
    whole test took 1165 s with 2 threads under load, 202 s with 1), and only ~1.4x faster when
    the cores are free (0.45 s/step)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every cache of pre-processed arrays goes to the user cache folder
    (``platformdirs.user_cache_dir``, ``$XDG_CACHE_HOME/msrfnet`` on Linux): keep the tests' caches
    out of the home folder, in this session's temporary folder (subprocesses inherit it). Session
    scope, so that it is in place before any module-scoped fixture trains."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        yield
