"""Each :class:`Config` field is declared once (default, rule, help, flag, section, resume and
inference roles) and ``msrf train``'s options, ``Config.validate`` and the resume and inference
field sets are made from that one declaration (issue 20, item 6)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from msrfnet import options as opt
from msrfnet.cli import build_parser
from msrfnet.cli.train import _explicit
from msrfnet.config import INFERENCE_FIELDS, OPTIONS, RESUME_CHANGEABLE, Config, Option
from msrfnet.errors import MSRFError


def train_parser() -> argparse.ArgumentParser:
    (subs,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return subs.choices["train"]


def test_every_field_is_declared_with_a_rule_and_help():
    fields = [f.name for f in dataclasses.fields(Config)]
    assert list(OPTIONS) == fields
    for name, option in OPTIONS.items():
        assert isinstance(option, Option) and callable(option.rule), name
        assert option.help.strip(), name
        assert option.flag is None or option.section, name


def test_the_train_flags_are_the_declared_ones():
    actions = {a.dest: a for a in train_parser()._actions if a.dest not in ("help", "resume")}
    declared = {name: o for name, o in OPTIONS.items() if o.flag is not None}
    assert set(actions) == set(declared)
    for name, option in declared.items():
        action = actions[name]
        assert action.option_strings[0] == option.flag and action.default is None, name
        assert action.help.replace("%%", "%") == option.help, name
        if option.switch:
            assert action.option_strings == [option.flag, "--no-" + option.flag[2:]], name
        else:
            assert action.type is option.rule, name
    config_only = {"edge_canny_low", "edge_canny_high", "in_channels", "num_classes", "threshold"}
    # start_weights (issue 21): a fine-tune's record of its starting weights, set by msrf train
    assert set(OPTIONS) - set(declared) == config_only | {"extra", "start_weights"}


def test_the_flags_names_are_the_fields_with_dashes():
    """What ``msrf train`` prints (demo defaults, errors) names a field by its flag."""
    for name, option in OPTIONS.items():
        assert option.flag in (None, "--" + name.replace("_", "-")), name


def test_the_resume_and_inference_fields_are_unchanged():
    assert RESUME_CHANGEABLE == {
        "epochs",
        "max_minutes",
        "batch_size",
        "workers",
        "devices",
        "strategy",
        "num_nodes",
        "precision",
        "compile",
        "channels_last",
        "subpixel",
        "deterministic",
        "cache_dir",
        "precise_bn",
    }
    assert set(INFERENCE_FIELDS) == {
        "variant",
        "in_channels",
        "num_classes",
        "image_size",
        "canny_low",
        "canny_high",
        "mask_threshold",
        "threshold",
        "normalize",
        "patch_size",
        "scale",
    }


@pytest.mark.parametrize(
    "argv,given",
    [
        ([], {}),
        (["--augment"], {"augment": True}),
        (["--no-augment"], {"augment": False}),
        (["--no-channels-last", "--no-subpixel"], {"channels_last": False, "subpixel": False}),
        (["--compile", "--no-compile"], {"compile": False}),  # the last one wins
        (["--deterministic", "--epochs", "3"], {"deterministic": True, "epochs": 3}),
        (["--patch-size", "64", "--scale", "0.5"], {"patch_size": 64, "scale": 0.5}),
        (
            ["--data", "d", "--cache-dir", "c", "--out", "o"],
            {"data": "d", "cache_dir": "c", "out": "o"},
        ),
    ],
)
def test_only_the_flags_given_are_explicit(argv, given):
    args = build_parser().parse_args(["train", *argv])
    assert _explicit(args) == given
    assert Config(**given).validate() == Config(**given)


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--augment", "yes", "ignored explicit argument 'yes'"),
        ("--data", "", "must be a non-empty text"),  # as Config.validate says of data: ''
        ("--out", " ", "must be a non-empty text"),
        ("--scale", "40", "must be a resampling factor above 0 and at most 16"),
        ("--patch-size", "60", "must be a positive multiple of 8"),
        ("--max-minutes", "-1", "must be a finite number above 0"),
    ],
)
def test_a_flag_is_checked_by_its_fields_rule(flag, value, words, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert f"msrf train: error: argument {flag}" in err and words in err


def test_validate_checks_each_field_by_its_declared_rule():
    for name in ("data", "out", "cache_dir"):
        with pytest.raises(MSRFError, match=f"^{name}: must be a non-empty text"):
            Config(**{name: ""}).validate()
    with pytest.raises(MSRFError, match="^extra: must be a mapping"):
        Config(extra=[1]).validate()
    config = Config(seed="7", scale=None, patch_size="64", image_size=64)
    assert (config.validate().seed, config.patch_size) == (7, 64)
    # only the fields asked for: a bad lr passes when only the inference fields are checked
    Config(lr=-1).validate(fields=INFERENCE_FIELDS)
    with pytest.raises(MSRFError, match="^x.yaml: lr: must be a finite number above 0"):
        Config(lr=-1).validate("x.yaml")


def test_a_switch_is_a_boolean_rule():
    assert {n for n, o in OPTIONS.items() if o.switch} == {
        f.name for f in dataclasses.fields(Config) if f.type == "bool"
    }
    assert all(OPTIONS[n].rule is opt.boolean for n in ("augment", "compile", "subpixel"))


def test_config_yaml_round_trip_and_old_files_load(tmp_path):
    config = Config(epochs=3, augment=True, patch_size=64, image_size=64, extra={"note": "x"})
    config.save(tmp_path / "config.yaml")
    assert Config.load(tmp_path / "config.yaml") == config
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert list(saved) == [f.name for f in dataclasses.fields(Config)]  # the field order
    old = {k: v for k, v in saved.items() if k not in ("precise_bn", "normalize", "cache_dir")}
    old["removed_option"] = 1  # an option an older version had
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    loaded = Config.load(tmp_path / "old.yaml")
    assert (loaded.epochs, loaded.precise_bn, loaded.normalize) == (3, "auto", "minmax")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**saved, "workers": -1}))
    with pytest.raises(MSRFError, match="bad.yaml: workers: must be 0 or more"):
        Config.load(tmp_path / "bad.yaml")


def test_train_help_lists_each_flag_once_under_its_section(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    sections = list(dict.fromkeys(o.section for o in OPTIONS.values() if o.flag))
    positions = [out.index(f"\n{title}:\n") for title in sections]
    assert positions == sorted(positions)
    for option in OPTIONS.values():
        if option.flag:
            assert out.count(f"  {option.flag} ") + out.count(f"  {option.flag},") == 1
    assert "1-99.8 % range" in out  # help text with a % survives argparse's formatting
