"""Two-process DDP on the CPU (gloo) through Lightning: the validation DSC is the mean over the
whole validation set, each image counted once, not a per-rank mean.

With 3 validation images on 2 ranks, Lightning's DistributedSampler gives rank 0 images [0, 2] and
pads rank 1 to [1, 0] (image 0 twice). ``MSRFModule.on_validation_epoch_end`` gathers the
per-image scores by image index and drops the repeat; this test recomputes the per-image DSCs
from the saved weights in this process and compares.

``msrf train`` runs as a subprocess: Lightning's DDP launcher re-executes the same command line
for rank 1, which needs a real ``python -m msrfnet.cli`` command, not pytest's.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import real_subset
from PIL import Image

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed unavailable"
)

SIZE = 16


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_value(rows: list[dict[str, str]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    assert values, f"{key} not logged"
    return values[-1]


def test_ddp_validation_dsc_covers_the_whole_val_set_once(tmp_path: Path) -> None:
    data = real_subset(tmp_path / "data", {"train": 2, "val": 3, "test": 1})
    # image 0 (the one the sampler repeats on rank 1) gets an empty mask, and one step at lr 1e-2
    # drives every probability far below 0.5 (an untrained net sits at ~0.5, where a pixel could
    # flip between two runs): empty truth + empty prediction scores 1, the others 0, so a per-rank
    # or padded mean would differ from the whole-set mean by 1/6
    first = sorted((data / "val" / "masks").iterdir())[0]
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(first)

    # loopback rendezvous on a free port (no hostname lookup); one thread per rank on 2 cores
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
    )
    env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None), env.pop("NODE_RANK", None)
    cmd = [
        sys.executable,
        "-m",
        "msrfnet.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "ddp",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--image-size",
        str(SIZE),
        "--epochs",
        "1",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--lr",
        "1e-2",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    assert "GLOBAL_RANK: 1" in proc.stderr + proc.stdout  # really two processes

    run = tmp_path / "runs" / "ddp"
    with open(run / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert _last_value(rows, "val/n_images") == 3
    logged = _last_value(rows, "val/dsc")

    from msrfnet.data import MSRFDataset, load_or_build_cache
    from msrfnet.metrics import per_image_dice_torch
    from msrfnet.model.loading import load_model
    from msrfnet.train.module import to_inputs

    model, config, _ = load_model(run / "last.safetensors")
    assert config.image_size == SIZE
    cache = load_or_build_cache(data, "val", SIZE, mask_threshold=config.mask_threshold)
    dataset = MSRFDataset(
        cache,
        canny=(config.canny_low, config.canny_high),
        edge_canny=(config.edge_canny_low, config.edge_canny_high),
    )
    assert len(dataset) == 3
    scores = []
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = {
                k: (v[None] if torch.is_tensor(v) else torch.tensor([v]))
                for k, v in dataset[i].items()
            }
            image, canny, mask, _ = to_inputs(batch)
            pred = torch.sigmoid(model(image, canny).final.float()) >= config.threshold
            scores.append(float(per_image_dice_torch(pred, mask.bool())[0]))
    expected = float(np.mean(scores))
    assert logged == pytest.approx(expected, abs=1e-5), (logged, scores)

    # the test can tell the right protocol from the wrong ones: rank 0's own mean (images 0, 2)
    # and the padded mean (0, 1, 2, 0) both differ from the whole-set mean here
    rank0 = float(np.mean([scores[0], scores[2]]))
    padded = float(np.mean(scores + [scores[0]]))
    assert abs(rank0 - expected) > 1e-3 and abs(padded - expected) > 1e-3, scores
