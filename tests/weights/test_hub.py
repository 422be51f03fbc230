"""``MSRFNet.save_pretrained`` / ``from_pretrained(DIR)``: the Hugging Face folder layout
round-trips the weights and the config, loads in every command, and never replaces a folder it did
not write."""

from __future__ import annotations

import json

import pytest
import torch
from _model_helpers import make_weights

import msrfnet
from msrfnet.errors import MSRFError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", image_size=32)
    return msrfnet.MSRFNet.from_pretrained(path)


def test_round_trip_keeps_weights_and_config(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "hub")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    record = json.loads((folder / "config.json").read_text())
    assert record["architecture"] == "MSRFNet" and record["config"]["image_size"] == 32
    again = msrfnet.MSRFNet.from_pretrained(folder)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        if a.is_floating_point():
            assert torch.equal(a, b), k
    assert again.msrf_config.image_size == 32
    seg = msrfnet.Segmenter.from_pretrained(folder, device="cpu", exact=True)
    assert seg.image_size == 32


def test_never_replaces_a_folder_it_did_not_write(model, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(MSRFError, match="already exists"):
        model.save_pretrained(foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "precious"
    ours = model.save_pretrained(tmp_path / "ours")
    with pytest.raises(MSRFError, match="overwrite"):
        model.save_pretrained(ours)
    model.save_pretrained(ours, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
