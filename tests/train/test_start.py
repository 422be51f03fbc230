"""A fine-tune's configuration (msrfnet/train/start.py, issue 21 items 1–2): what comes from the
weights, the fine-tune defaults, the one-line refusals, and the module's frozen BatchNorm, frozen
encoder and warm-up schedule. No training here (tests/train/test_finetune.py trains)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _model_helpers import make_weights
from torch.nn.modules.batchnorm import _BatchNorm

from msrfnet.cli import main
from msrfnet.config import Config
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet
from msrfnet.train.module import MSRFModule, _Schedule
from msrfnet.train.resume import check_resume_changes
from msrfnet.train.start import FINETUNE_DEFAULTS, finetune_config, read_start
from msrfnet.weights.checkpoint import save_weights
from msrfnet.weights.resolve import SHIPPED_WEIGHTS


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Weights whose config differs from the defaults in everything a fine-tune takes over."""
    config = Config(
        image_size=48, canny_low=5, canny_high=100, normalize="percentile", threshold=0.4
    )
    path = tmp_path_factory.mktemp("w") / "start.safetensors"
    save_weights(path, MSRFNet(), config)
    return path


def test_the_weights_set_size_canny_normalisation_and_the_defaults_the_rest(weights):
    config, defaults, taken = finetune_config({"weights": str(weights), "epochs": 3})
    assert (config.image_size, config.canny_low, config.canny_high) == (48, 5, 100)
    assert (config.normalize, config.threshold, config.variant) == ("percentile", 0.4, "official")
    assert config.patch_size is None and config.epochs == 3  # given: kept
    assert defaults == {k: v for k, v in FINETUNE_DEFAULTS.items() if k != "epochs"}
    assert (config.lr, config.schedule, config.precise_bn) == (5e-5, "cosine", "frozen")
    assert config.augment and config.validate_first and config.warmup_steps == 5
    assert taken["image_size"] == 48 and taken["canny_high"] == 100
    assert Config().lr == 1e-4 and not Config().augment  # from scratch: the paper's recipe


def test_given_options_win_over_the_weights_and_the_defaults(weights):
    given = {"weights": str(weights), "patch_size": 32, "image_size": 32, "lr": 1e-4}
    given.update(canny_high=200, normalize="minmax", precise_bn="auto", augment=False)
    config, defaults, taken = finetune_config(given)
    assert (config.patch_size, config.image_size, config.scale) == (32, 32, None)
    assert (config.canny_low, config.canny_high, config.normalize) == (5, 200, "minmax")
    assert (config.lr, config.precise_bn, config.augment) == (1e-4, "auto", False)
    assert "image_size" not in taken and "lr" not in defaults


@pytest.mark.parametrize(
    "field, value, flag",
    [("variant", "clean", "--variant clean"), ("num_classes", 2, "num_classes 2")],
)
def test_an_override_the_weights_cannot_take_is_one_line(weights, field, value, flag):
    with pytest.raises(MSRFError) as info:
        finetune_config({"weights": str(weights), field: value})
    message = str(info.value)
    assert message.startswith(f"{flag}: the weights start.safetensors are {field} ")
    assert "\n" not in message
    with pytest.raises(MSRFError, match=f"^{flag}: "):  # train(Config) directly: the same
        read_start(Config(weights=str(weights), **{field: value}))


def test_read_start_records_the_file_and_its_digest(weights):
    import hashlib

    config = Config(weights=str(weights), image_size=48)
    before = weights.stat().st_mtime_ns
    path, state = read_start(config)
    assert path == weights and "head_final.weight" in state
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert config.start_weights == {
        "file": "start.safetensors",
        "path": str(weights.resolve()),
        "sha256": digest,
    }
    assert weights.stat().st_mtime_ns == before
    assert read_start(Config()) is None


def test_shipped_names_the_shipped_weights():
    _, saved_defaults, taken = finetune_config({"weights": "shipped"})
    assert taken["image_size"] == 256 and taken["canny_high"] == 100  # the shipped recipe
    config = Config(weights="shipped")
    assert read_start(config)[0] == SHIPPED_WEIGHTS
    assert config.start_weights["file"] == SHIPPED_WEIGHTS.name


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("msrf train: error:")]


@pytest.mark.parametrize(
    "args, start",
    [
        (["--resume", "RUN", "--weights", "shipped"], "--resume RUN and --weights shipped: "),
        (["--precise-bn", "frozen"], "--precise-bn frozen keeps the starting weights' "),
        (["--freeze", "encoder"], "--freeze encoder holds starting weights fixed; give --weights"),
        (["--weights", "no/such.safetensors"], "no/such.safetensors: no such weights file"),
        (["--weights", "shipped", "--variant", "clean"], "--variant clean: the weights msrfnet_"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, args, start):
    out = tmp_path / "runs"
    assert main(["train", "--out", str(out), "--workers", "0", *args]) != 0
    lines = _errors(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"msrf train: error: {start}"), lines
    assert not out.exists()


def test_frozen_batchnorm_cannot_be_switched_on_resume():
    saved = Config(weights="w", precise_bn="frozen")
    check_resume_changes(saved, Config(weights="w", precise_bn="frozen", epochs=200))
    with pytest.raises(MSRFError, match="^precise_bn: cannot change when resuming between frozen"):
        check_resume_changes(saved, Config(weights="w", precise_bn="auto"))


def test_frozen_batchnorm_stays_in_eval_mode_and_the_encoder_is_held():
    module = MSRFModule(Config(weights="w", precise_bn="frozen", freeze="encoder"))
    module.train()
    bns = [m for m in module.model.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(bn.training for bn in bns)
    assert module.model.msrf.training  # the rest trains
    assert not any(p.requires_grad for p in module.model.encoder.parameters())
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    optimizer = module.configure_optimizers()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    only_encoder = MSRFModule(Config(weights="w", freeze="encoder")).train()
    encoder_bns = [m for m in only_encoder.model.encoder.modules() if isinstance(m, _BatchNorm)]
    assert encoder_bns and not any(bn.training for bn in encoder_bns)
    assert any(m.training for m in only_encoder.model.d2.modules() if isinstance(m, _BatchNorm))
    backbone = MSRFModule(Config(weights="w", freeze="backbone")).train()
    held = [p for part in (backbone.model.encoder, backbone.model.msrf) for p in part.parameters()]
    assert not any(p.requires_grad for p in held)
    assert all(p.requires_grad for p in backbone.model.d2.parameters())
    scratch = MSRFModule(Config()).train()
    assert all(m.training for m in scratch.model.modules())


def test_the_warm_up_rises_linearly_then_the_cosine_ends_at_zero():
    schedule = _Schedule(warmup=4, total=20, cosine=True)
    factors = [schedule(step) for step in range(21)]
    cosine = [0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(21)]
    expected = [min(1.0, (s + 1) / 4) * c for s, c in enumerate(cosine)]
    assert factors == pytest.approx(expected, abs=1e-12)
    assert factors[20] == pytest.approx(0.0, abs=1e-9) and factors[10] == pytest.approx(0.5)
    flat = _Schedule(warmup=2, total=20, cosine=False)
    assert [flat(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    timed = _Schedule(warmup=1, total=10**6, cosine=True, seconds=1e-9)  # the time ends first
    timed(0), timed(1)
    assert timed(2) == pytest.approx(0.0, abs=1e-9)
    assert math.isclose(_Schedule(0, 10, True)(0), 1.0)


def test_the_starting_weights_load_into_the_module(tmp_path):
    path = make_weights(tmp_path / "w.safetensors", image_size=32)
    config = Config(weights=str(path), image_size=32)
    start = read_start(config)
    module = MSRFModule(config)
    from msrfnet.train.start import load_start

    load_start(module.model, *start)
    reference = MSRFNet.from_pretrained(path).state_dict()
    for name, value in module.model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(value, reference[name]), name
