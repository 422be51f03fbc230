"""``msrfnet.train.machine``: ``--devices`` and the training memory against this machine."""

from __future__ import annotations

import os

import pytest

from msrfnet import options
from msrfnet.cli import main
from msrfnet.errors import MSRFError
from msrfnet.train import machine


# --- the machine -----------------------------------------------------------------------------
@pytest.fixture()
def cpu_only(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine, "_cpu_count", lambda: 2)


def test_devices_above_the_cpu_count_are_refused(cpu_only):
    assert machine.check_devices("2") == 2 and machine.check_devices("auto") == 1
    with pytest.raises(MSRFError, match=r"^--devices 3: this machine has 2 CPU core\(s\) and no"):
        machine.check_devices("3")
    with pytest.raises(MSRFError, match="^--devices 0,1: device indices name GPUs"):
        machine.check_devices("0,1")


def test_devices_above_the_gpu_count_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert machine.check_devices("0,1") == 2 and machine.check_devices("-1") == 2
    with pytest.raises(MSRFError, match=r"^--devices 4: this machine has 2 GPU\(s\)"):
        machine.check_devices("4")
    with pytest.raises(MSRFError, match="indices 0 to 1"):
        machine.check_devices("1,2")


def test_cli_devices_3_on_a_two_core_cpu_fails_in_one_line(cpu_only, tmp_path, capsys):
    assert main(["train", "--devices", "3", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["msrf train: error: --devices 3: this machine has 2 CPU core(s) and no GPU"]
    assert not (tmp_path / "runs").exists()


def test_training_memory_estimate_scales_with_pixels_batch_and_precision():
    base = machine.training_memory_gib(256, 1, "bf16-mixed")
    assert base == pytest.approx(machine.GIB_PER_256_IMAGE[2])
    assert machine.training_memory_gib(512, 1, "bf16-mixed") == pytest.approx(4 * base)
    assert machine.training_memory_gib(256, 3, "bf16-mixed") == pytest.approx(3 * base)
    assert machine.training_memory_gib(256, 1, "32-true") > 1.9 * base


def test_an_image_size_the_machine_cannot_hold_is_refused_with_the_estimate(cpu_only, monkeypatch):
    monkeypatch.setattr(machine, "available_ram", lambda: (8 * 2**30, "of RAM available"))
    assert machine.check_training_memory(256, 4, "32-true") == pytest.approx(4 * 0.74)
    with pytest.raises(MSRFError) as refused:
        machine.check_training_memory(1024, 2, "32-true")
    message = str(refused.value)
    assert message.startswith("--image-size 1024: training needs about 23.68 GiB")
    assert "8.0 GiB of RAM available" in message and "\n" not in message
    with pytest.raises(MSRFError, match="× 2 processes"):  # CPU processes share the RAM
        machine.check_training_memory(512, 4, "32-true", processes=2)


def test_available_ram_is_positive_and_below_the_total():
    have, where = options.available_ram()
    assert 0 < have <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") and where
