"""``TorchRunner``: an image's probabilities do not depend on the other images of the call, so
that ``msrf predict --skip-existing`` rewrites a lost output with the bytes an uninterrupted run
wrote (docs/SAFETY.md). Before one-image calls on the CPU, float32 convolutions chose their
kernels by batch size (most pixels changed in the last bits, any number of threads) and the
final sigmoid split the batch between threads at offsets that fell inside images (a few pixels,
at 3 threads)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _model_helpers import make_weights
from torch import nn

from msrfnet.accel.cpu import cpu_supports_bf16
from msrfnet.data import read_image, sample_root
from msrfnet.inference.runners import TorchRunner
from msrfnet.inference.segmenter import Segmenter


@pytest.fixture(scope="module")
def rgbs():
    return [read_image(f) for f in sorted((sample_root() / "test" / "images").glob("*.png"))[:3]]


@pytest.fixture()
def threads():
    """Set the number of intra-op threads for one test, and put it back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


class BatchCoupled(nn.Module):
    """A stand-in network whose logits for an image depend on the other images of its batch
    (their mean): what a kernel chosen or split by batch size does, only visibly."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, image: torch.Tensor, canny: torch.Tensor) -> SimpleNamespace:
        x = image.mean(1, keepdim=True) * self.gain + canny
        return SimpleNamespace(final=x + x.mean(0, keepdim=True))


def alone_and_together(predict, items):
    """(each item predicted alone, all of them in one call) as two lists of arrays."""
    return [predict([x])[0] for x in items], list(predict(items))


def assert_same_bytes(alone, together, threshold=0.5):
    for a, b in zip(alone, together, strict=True):
        assert a.tobytes() == b.tobytes(), f"{int((a != b).sum())} probabilities differ"
        assert (a >= threshold).tobytes() == (b >= threshold).tobytes()


def test_a_batch_coupled_network_is_run_one_image_at_a_time():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    canny = rng.integers(0, 2, (5, 1, 16, 16), dtype=np.uint8)
    runner = TorchRunner(BatchCoupled(), "cpu", exact=True)
    together = runner(images, canny)
    assert together.shape == (5, 16, 16) and together.dtype == np.float32
    alone = [runner(images[i : i + 1], canny[i : i + 1])[0] for i in range(5)]
    assert_same_bytes(alone, together)
    empty = runner(images[:0], canny[:0])
    assert empty.shape == (0, 16, 16)


def test_tiled_windows_do_not_depend_on_the_batch_size():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    runner = TorchRunner(BatchCoupled(), "cpu", exact=True)
    seg = Segmenter(runner, image_size=16, tile=16, overlap=0.25)
    one = seg.probabilities([rgb], batch_size=1)[0]
    eight = seg.probabilities([rgb], batch_size=8)[0]
    assert one.shape == (40, 52)
    assert one.tobytes() == eight.tobytes()


def test_float32_probabilities_alone_equal_those_in_a_batch(tmp_path, rgbs, threads):
    weights = make_weights(tmp_path / "w.safetensors", image_size=32)
    seg = Segmenter.open(weights, device="cpu", exact=True)
    assert seg.runner.numerics == "float32"
    for n in (1, 2):  # before: thousands of pixels (of the 256² maps) differed at each
        threads(n)
        assert_same_bytes(*alone_and_together(seg.probabilities, rgbs))


@pytest.mark.skipif(not cpu_supports_bf16(), reason="no native bfloat16: the float32 test covers")
def test_bfloat16_probabilities_alone_equal_those_in_a_batch(rgbs, threads):
    seg = Segmenter.open(None, device="cpu")  # the shipped weights, 256², the bf16 fast path
    assert seg.runner.numerics.startswith("bfloat16")
    threads(3)  # before: 1 and 2 probabilities of the two images differed (the last sigmoid)
    assert_same_bytes(*alone_and_together(seg.probabilities, rgbs[:2]), seg.threshold)
