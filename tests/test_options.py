"""Every option is checked when it is parsed (issue 11, item 5): one line naming the option, exit 2,
before anything runs; the same rules check a Config from the Python API or a config.yaml; the
machine checks refuse devices and image sizes this machine cannot serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from msrfnet import options
from msrfnet.cli import build_parser
from msrfnet.config import Config
from msrfnet.errors import MSRFError


def parse_error(argv: list[str], capsys) -> str:
    """The error line argparse prints for ``argv`` (it must exit with status 2)."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    return lines[0]


BAD_TRAIN = [
    ("--epochs", "0"),
    ("--epochs", "-1"),
    ("--epochs", "2.5"),
    ("--batch-size", "0"),
    ("--batch-size", "-1"),
    ("--num-nodes", "0"),
    ("--lr", "-1"),
    ("--lr", "nan"),
    ("--lr", "0"),
    ("--lr", "inf"),
    ("--max-minutes", "0"),
    ("--max-minutes", "nan"),
    ("--workers", "-1"),
    ("--seed", "-1"),
    ("--seed", str(2**32)),
    ("--canny-low", "-5"),
    ("--canny-high", "-1"),
    ("--image-size", "100"),
    ("--image-size", "0"),
    ("--image-size", "-64"),
    ("--variant", "fancy"),
    ("--precision", "8-bit"),
    ("--schedule", "linear"),
    ("--devices", "two"),
    ("--devices", "0"),
    ("--mask-threshold", "nan"),
    ("--name", "a/b"),
    ("--name", ".."),
    ("--strategy", ""),
]


@pytest.mark.parametrize("flag,value", BAD_TRAIN)
def test_train_option_refused_when_parsed(flag, value, capsys):
    line = parse_error(["train", flag, value], capsys)
    assert line.startswith(f"msrf train: error: argument {flag}:")


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--steps", "0"],
        ["bench", "--batch-size", "-2"],
        ["bench", "--image-size", "30"],
        ["bench", "--workers", "-1"],
        ["test", "--batch-size", "0"],
        ["test", "--image-size", "12"],
        ["test", "--threshold", "nan"],
        ["predict", "x.png", "--batch-size", "0"],
        ["predict", "x.png", "--threshold", "1.5"],
        ["export", "--calibration-count", "0"],
        ["export", "--image-size", "7"],
        ["check-data", "d", "--mask-threshold", "inf"],
        ["split", "s", "--out", "o", "--seed", "-1"],
    ],
)
def test_other_commands_check_their_numbers(argv, capsys):
    line = parse_error(argv, capsys)
    assert f"msrf {argv[0]}: error: argument --" in line


def test_good_values_parse_to_their_types():
    args = build_parser().parse_args(
        [
            "train",
            "--epochs",
            "3",
            "--lr",
            "1e-3",
            "--image-size",
            "64",
            "--variant",
            "clean",
            "--devices",
            "0,1",
            "--workers",
            "0",
            "--seed",
            "0",
        ]
    )
    got = (args.epochs, args.lr, args.image_size, args.variant, args.devices, args.workers)
    assert got == (3, 1e-3, 64, "clean", "0,1", 0) and args.seed == 0


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": -1}, "batch_size"),
        ({"variant": "x"}, "variant"),
        ({"image_size": 100}, "image_size"),
        ({"threshold": 2.0}, "threshold"),
        ({"augment": "yes"}, "augment"),
        ({"epochs": "ten"}, "epochs"),
        ({"canny_low": 50, "canny_high": 10}, "canny_low"),
        ({"workers": True}, "workers"),
        ({"name": "../up"}, "name"),
    ],
)
def test_config_validate_names_the_field(changes, field):
    with pytest.raises(MSRFError, match=rf"^where\.yaml: {field}\b"):
        Config(**changes).validate("where.yaml")


def test_config_validate_accepts_the_defaults_and_converts_numbers():
    config = Config(epochs="3", lr=1, data=Path("d"))
    config.validate()
    assert (config.epochs, config.lr, config.data) == (3, 1.0, "d")


def test_train_api_refuses_bad_config_before_anything(tmp_path):
    from msrfnet.train.fit import train

    with pytest.raises(MSRFError, match="^epochs: must be a positive whole number"):
        train(Config(epochs=-1, out=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()


def test_one_image_size_rule_everywhere():
    from msrfnet.bench import plan as bench
    from msrfnet.data import datamodule
    from msrfnet.inference import segmenter

    assert (
        segmenter.check_image_size
        is bench.check_image_size
        is datamodule.check_image_size
        is options.check_image_size
    )
    with pytest.raises(MSRFError, match="image_size 250: must be a positive multiple of 8.*248"):
        options.check_image_size(250)


def test_inference_memory_is_checked_against_the_machine(monkeypatch):
    """Prediction's memory rule: the measured peak per 256² image scaled by pixels and batch,
    against the RAM this process can get (a CPU) — refused in one line naming the option."""
    monkeypatch.setattr(options, "available_ram", lambda: (2**30, "of RAM available"))
    assert options.check_inference_memory(256) == pytest.approx(options.GIB_PER_256_INFERENCE)
    assert options.check_inference_memory(512, 1, device="cpu") == pytest.approx(0.8)
    with pytest.raises(MSRFError) as refused:
        options.check_inference_memory(1024, 1, "--tile")
    assert str(refused.value) == (
        "--tile 1024: predicting one input of 1024×1024 at once needs about 3.2 GiB, more than "
        "the 1.0 GiB of RAM available; lower --tile"
    )
    with pytest.raises(MSRFError, match=r"^image_size 256: predicting 8 inputs .* or the batch"):
        options.check_inference_memory(256, 8, "image_size")
    assert options.inference_memory_gib(100_000) > 30_000  # msrf predict --image-size 100000
