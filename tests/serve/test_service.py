"""``msrf serve``'s query parameters without a web framework (:func:`parse_options`): each is
checked by the rule of the ``msrf predict`` option of that name and refused with that rule's
words; a parameter not given takes the option group's default, not a copy of it (issue 20)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from msrfnet.cli import build_parser
from msrfnet.option_groups import MIN_SIZE, SEED_DISTANCE, Objects
from msrfnet.serve.service import (
    MAX_MB_FLAG,
    MAX_MEGAPIXELS_FLAG,
    QUERY,
    BadRequest,
    Options,
    TooLarge,
    decode_upload,
    parse_options,
)


def cli_rule_message(flag: str, value: str, capsys) -> str:
    """What ``msrf predict x.png FLAG VALUE`` says about the value (argparse's line, its
    ``msrf predict: error: argument FLAG:`` prefix and ``(see ...)`` suffix taken off)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "x.png", flag, value])
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    rule = line.split(f"argument {flag}: ", 1)[1]
    return rule.removesuffix(" (see msrf predict --help)")


@pytest.mark.parametrize(
    "name,value",
    [
        ("threshold", "1.5"),
        ("threshold", "abc"),
        ("overlap", "0.95"),
        ("overlap", "-1"),
        ("min_size", "-3"),
        ("min_size", "2.5"),
        ("seed_distance", "0"),
        ("tile", "60"),
        ("scale", "0"),
    ],
)
def test_a_bad_parameter_says_what_the_command_line_says(name, value, capsys):
    expected = cli_rule_message("--" + name.replace("_", "-"), value, capsys)
    with pytest.raises(BadRequest) as refused:
        parse_options({name: value})
    assert str(refused.value) == f"{name} {value}: {expected}"
    assert refused.value.status == 400


def test_no_parameters_give_the_option_groups_defaults():
    opts = parse_options({})
    assert opts == Options() and opts.threshold is None and opts.tiling == {}
    assert opts.objects == Objects() == Objects(min_size=MIN_SIZE, seed_distance=SEED_DISTANCE)
    assert parse_options({"threshold": None, "tile": None}) == Options()  # None: not given


def test_good_parameters_are_converted_by_their_rules():
    opts = parse_options(
        {
            "format": "json",
            "instances": "Yes",
            "images": "0",
            "threshold": " 0.25 ",
            "min_size": "0",
            "seed_distance": "7",
            "overlap": "0.5",
            "scale": "1",
        }
    )
    assert (opts.format, opts.instances, opts.images, opts.threshold) == ("json", True, False, 0.25)
    assert opts.objects == Objects(min_size=0, seed_distance=7)
    assert opts.tiling == {"overlap": 0.5, "scale": None}  # only what was given; scale 1: native


def test_an_unknown_parameter_is_refused_naming_the_known_ones():
    with pytest.raises(BadRequest, match="^unknown parameter 'colour' \\(known: format, "):
        parse_options({"colour": "red"})
    assert {"tile", "overlap", "scale", "min_size", "seed_distance", "threshold"} <= set(QUERY)


def test_the_limits_are_named_by_the_options_msrf_serve_has(capsys):
    """The 413 answers name the options that raise the limits: they must be msrf serve's."""
    top = build_parser()
    args = top.parse_args(["serve", MAX_MB_FLAG, "2", MAX_MEGAPIXELS_FLAG, "3"])
    assert (args.max_mb, args.max_megapixels) == (2.0, 3.0)
    with pytest.raises(SystemExit):
        top.parse_args(["serve", "--max-pixels", "3"])  # the name the message used to give
    capsys.readouterr()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(TooLarge, match=r"over this server's limit of 500 pixels") as big:
        decode_upload(buf.getvalue(), "big.png", max_pixels=500)
    assert str(big.value).endswith(f"(msrf serve {MAX_MEGAPIXELS_FLAG} 0.0005)")
    assert decode_upload(buf.getvalue(), "ok.png", max_pixels=600).shape == (20, 30, 3)
