"""``--weights`` resolution (msrfnet/weights/resolve.py): ``shipped`` names the bundled weights
(issue 21, item 1), unless a file or folder of that name is in the working folder."""

from __future__ import annotations

import pytest

from msrfnet.errors import MSRFError
from msrfnet.weights.resolve import SHIPPED_WEIGHTS, explicit_weights, resolve_weights


def test_shipped_names_the_bundled_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert explicit_weights("shipped") == SHIPPED_WEIGHTS
    assert resolve_weights("shipped", prefer_runs=True) == SHIPPED_WEIGHTS


def test_a_folder_named_shipped_is_taken_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shipped").mkdir()
    with pytest.raises(MSRFError, match="^shipped: run folder without best.safetensors"):
        explicit_weights("shipped")


def test_missing_shipped_weights_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("msrfnet.weights.resolve.SHIPPED_WEIGHTS", tmp_path / "gone.safetensors")
    with pytest.raises(MSRFError, match="^--weights shipped: .*gone.safetensors is not installed$"):
        explicit_weights("shipped")
