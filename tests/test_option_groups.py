"""``msrfnet.option_groups``: one default and one rule per inference option, checked when a group
is made, the error naming the field."""

from __future__ import annotations

import pytest

from msrfnet.errors import MSRFError
from msrfnet.option_groups import MIN_SIZE, SEED_DISTANCE, ModelSource, Objects, Tiling


def test_tiling_checks_and_normalises():
    assert Tiling().asked is False and Tiling(tile=64).asked and Tiling(scale=0.5).asked
    assert Tiling(scale=1).scale is None and Tiling(scale="2").scale == 2.0
    with pytest.raises(MSRFError, match=r"^overlap 0.95: must lie in \[0, 0.9\]"):
        Tiling(overlap=0.95)
    with pytest.raises(MSRFError, match="^tile 60: must be a positive multiple of 8.*56 or 64"):
        Tiling(tile=60)
    with pytest.raises(MSRFError, match="^scale 0: must be a finite number above 0"):
        Tiling(scale=0)


def test_objects_defaults_and_rules():
    assert Objects().as_dict() == {"min_size": MIN_SIZE, "seed_distance": SEED_DISTANCE}
    with pytest.raises(MSRFError, match="^min_size -1: must be 0 or more"):
        Objects(min_size=-1)
    with pytest.raises(MSRFError, match="^seed_distance 0: must be a positive whole number"):
        Objects(seed_distance=0)


def test_model_source_rules():
    assert ModelSource(image_size="64").image_size == 64
    with pytest.raises(MSRFError, match="^batch_size 0: must be a positive whole number"):
        ModelSource(batch_size=0)
    with pytest.raises(MSRFError, match=r"^threshold 1.5: must lie in \[0, 1\]"):
        ModelSource(threshold=1.5)


def test_outputs_rules():
    from pathlib import Path

    from msrfnet.option_groups import Outputs

    assert Outputs().out == Path("predictions") and Outputs("masks/").out == Path("masks")
    assert Outputs(overwrite=True).overwrite and Outputs(skip_existing=True).skip_existing
    with pytest.raises(MSRFError, match="^pass either --overwrite or --skip-existing, not both"):
        Outputs(overwrite=True, skip_existing=True)
    with pytest.raises(MSRFError, match="^out: must be a non-empty text"):
        Outputs(out="")
