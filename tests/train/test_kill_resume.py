"""``kill -9`` during training, then ``msrf train --resume RUN_DIR``: the run continues from the
last complete checkpoint and loses at most the epoch that was in progress.

``msrf train`` runs as a subprocess and is killed with SIGKILL at two moments: a little into an
epoch (mid training step), and while ``checkpoints/last.ckpt`` is being written (the temporary file
of :class:`~msrfnet.train.callbacks.AtomicCheckpointIO` exists) — the moment a non-atomic writer
would leave a truncated checkpoint. The resume runs in this process.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import real_subset, train_args

STARTUP_TIMEOUT = 240  # s until the first checkpoint, on 2 loaded cores (about 20 s when quiet)


def _history_epochs(run: Path) -> list[int]:
    path = run / "history.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _temp_files(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob(".last.ckpt.*.tmp"))


def _wait(
    predicate, timeout: float, proc: subprocess.Popen, log: Path, what: str, interval: float = 0.005
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(
                f"msrf train ended (rc {proc.returncode}) before {what}\n{log.read_text()[-5000:]}"
            )
        time.sleep(interval)
    proc.kill()
    proc.wait()
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return real_subset(tmp_path_factory.mktemp("kdsb"), {"train": 4, "val": 2, "test": 1})


@pytest.mark.parametrize("moment", ["mid-epoch", "mid-checkpoint-write"])
def test_kill_9_then_resume_loses_at_most_one_epoch(
    data, tmp_path, monkeypatch, one_thread, moment
):
    run = tmp_path / "runs" / "k"
    args = train_args(data, tmp_path / "runs", "k", epochs=30, size=16)
    # one thread per process: on 2 shared cores, 2 OpenMP threads slow to a crawl under contention
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    log = (
        tmp_path / "train.log"
    )  # a file, not a pipe: an unread pipe would block the child when full
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "msrfnet.cli", *args],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ckpt = run / "checkpoints" / "last.ckpt"
        _wait(
            lambda: ckpt.is_file() and len(_history_epochs(run)) >= 1,
            STARTUP_TIMEOUT,
            proc,
            log,
            "the first checkpoint",
            interval=0.05,
        )
        if moment == "mid-epoch":
            first = ckpt.stat().st_mtime_ns
            _wait(lambda: ckpt.stat().st_mtime_ns != first, 120, proc, log, "the next checkpoint")
            time.sleep(0.3)  # into the following epoch (one epoch is ~1 s here)
        else:
            # the next epoch's checkpoint is being written: its temporary file exists
            _wait(lambda: bool(_temp_files(run)), 120, proc, log, "a checkpoint write")
        assert proc.poll() is None, "msrf train finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # the checkpoint on disk is complete and safe to open
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    e = state["epoch"]  # 0-based index of the last complete epoch
    assert e >= 0 and state["optimizer_states"] and "msrf_rng" in state
    on_disk = _history_epochs(run)
    print(
        f"killed {moment}: last.ckpt holds epoch index {e}; history.csv rows {on_disk}; "
        f"temp files {_temp_files(run)}"
    )
    assert on_disk[: e + 1] == list(range(1, e + 2))
    assert len(on_disk) <= e + 2  # at most the killed epoch is past the checkpoint
    if moment == "mid-checkpoint-write":
        # killed during the write: what is left is a temporary file, never a truncated last.ckpt
        assert _temp_files(run) or state["epoch"] + 1 == len(on_disk)

    # resume in-process; spy on the RNG restore
    from msrfnet.cli import main
    from msrfnet.train.module import MSRFModule

    restored = {}
    original = MSRFModule.on_load_checkpoint

    def spy(self, checkpoint):
        original(self, checkpoint)
        restored["torch"] = torch.get_rng_state().clone()
        restored["numpy"] = np.random.get_state()[1].copy()
        restored["python"] = list(random.getstate()[1])

    monkeypatch.setattr(MSRFModule, "on_load_checkpoint", spy)
    assert main(["train", "--resume", str(run), "--epochs", str(e + 2), "--workers", "0"]) == 0

    rng = state["msrf_rng"]
    assert torch.equal(restored["torch"], rng["torch"])
    assert np.array_equal(restored["numpy"].astype(np.int64), rng["numpy"].numpy())
    assert restored["python"] == list(rng["python"])

    assert _history_epochs(run) == list(range(1, e + 3))  # no gap, no duplicate
    resumed = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == e + 1 and resumed["optimizer_states"] and "msrf_rng" in resumed
    assert (
        resumed["global_step"] == (e + 2) * 2
    )  # 4 images, batch 2: every step of every epoch ran once
    assert not _temp_files(run), "a temporary checkpoint file of the killed run is left behind"
