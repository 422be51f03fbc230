"""Checkpoints from untrusted sources: pickle payloads are refused without running, mismatched
weights give a clear message, writes are atomic."""

from __future__ import annotations

import os

import pytest
import torch

from msrfnet.cli import main
from msrfnet.config import Config
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet
from msrfnet.model.loading import load_model
from msrfnet.safe_output import atomic_write
from msrfnet.weights.checkpoint import read_checkpoint, save_weights


class Payload:
    """Unpickling this writes a file: proof that a payload ran."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture()
def evil_ckpt(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    state = {k: v for k, v in MSRFNet().state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {"config": Config().to_dict()},
            "payload": Payload(str(marker)),
        },
        path,
    )
    return path, marker


def test_pickle_payload_is_refused_and_never_runs(evil_ckpt):
    path, marker = evil_ckpt
    with pytest.raises(MSRFError, match="refusing to load.*pickled"):
        load_model(path)
    assert not marker.exists()


def test_cli_refuses_the_payload_in_one_line(evil_ckpt, tmp_path, capsys):
    path, marker = evil_ckpt
    from msrfnet.data import sample_root

    image = next((sample_root() / "test" / "images").iterdir())
    assert main(["predict", str(image), "--weights", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing" in err[0] and str(path) in err[0]
    assert not marker.exists()


def test_resume_refuses_a_poisoned_last_checkpoint(evil_ckpt, tmp_path, capsys):
    path, marker = evil_ckpt
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    Config(image_size=32).save(run / "config.yaml")
    os.replace(path, run / "checkpoints" / "last.ckpt")
    assert main(["train", "--resume", str(run)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert not marker.exists()


def test_safetensors_round_trip_keeps_config_and_metrics(tmp_path):
    torch.manual_seed(0)
    model = MSRFNet(variant="clean", num_classes=2).eval()
    save_weights(
        tmp_path / "w.safetensors",
        model,
        Config(image_size=96, variant="clean", num_classes=2),
        {"val/dsc": 0.5},
    )
    loaded, config, info = load_model(tmp_path / "w.safetensors")
    assert (loaded.variant, loaded.num_classes, config.image_size) == ("clean", 2, 96)
    assert info["metrics"] == {"val/dsc": 0.5}
    x, c = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, c).final, loaded(x, c).final)


def test_half_precision_weights_load_as_float32(tmp_path):
    model = MSRFNet().eval()
    save_weights(tmp_path / "h.safetensors", model, Config(), half=True)
    state, _, _ = read_checkpoint(tmp_path / "h.safetensors")
    assert state["encoder.e1.conv1.weight"].dtype == torch.float16
    loaded, _, _ = load_model(tmp_path / "h.safetensors")
    assert loaded.encoder.e1.conv1.weight.dtype == torch.float32
    x, c = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    with torch.no_grad():
        assert (
            torch.sigmoid(model(x, c).final) - torch.sigmoid(loaded(x, c).final)
        ).abs().max() < 1e-2


def test_weights_of_another_variant_or_class_count_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    save_weights(tmp_path / "clean.safetensors", MSRFNet(variant="clean"), Config(variant="clean"))
    tensors = load_file(tmp_path / "clean.safetensors")
    save_file(
        tensors,
        tmp_path / "lying.safetensors",
        metadata={"variant": "official", "num_classes": "1"},
    )
    with pytest.raises(MSRFError, match="do not fit MSRF-Net variant='official'"):
        load_model(tmp_path / "lying.safetensors")
    save_weights(tmp_path / "k2.safetensors", MSRFNet(num_classes=2), Config(num_classes=2))
    tensors = load_file(tmp_path / "k2.safetensors")
    save_file(
        tensors,
        tmp_path / "k2_as_1.safetensors",
        metadata={"variant": "official", "num_classes": "1"},
    )
    with pytest.raises(MSRFError, match="num_classes=1"):
        load_model(tmp_path / "k2_as_1.safetensors")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", b"PK\x03\x04broken zip"])
def test_garbage_files_are_clear_errors(tmp_path, content):
    for suffix in (".ckpt", ".safetensors"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(MSRFError, match=str(path.name)):
            load_model(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(MSRFError, match="no such checkpoint"):
        load_model(tmp_path / "nope.safetensors")


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]  # no temporary file left behind
