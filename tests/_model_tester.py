"""One test base for every MSRF-Net configuration, in the manner of smp's ``BaseModelTester``:
a subclass names how to build the model; the base checks what every model must do.

``tests/`` is not a package: import as ``from _model_tester import ModelTester``.
"""

from __future__ import annotations

import torch

import msrfnet
from msrfnet.model.pipeline import ImageToProbability


class ModelTester:
    """Subclass with ``build()`` (a fresh model) and, optionally, ``num_classes``."""

    num_classes = 1
    shape = (1, 32, 40)  # batch, height, width: not square, multiples of 8

    def build(self) -> msrfnet.MSRFNet:  # pragma: no cover - overridden
        raise NotImplementedError

    def _inputs(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        b, h, w = self.shape
        image = torch.rand(b, 3, h, w, generator=g)
        canny = (torch.rand(b, 1, h, w, generator=g) > 0.9).float()
        return image, canny

    def test_forward_shapes(self):
        torch.manual_seed(0)
        model = self.build().eval()
        b, h, w = self.shape
        with torch.no_grad():
            out = model(*self._inputs())
        c = self.num_classes
        assert out.final.shape == (b, c, h, w) and out.edge.shape == (b, 1, h, w)
        assert out.aux2.shape == (b, c, h // 2, w // 2) and out.aux4.shape == (b, c, h // 4, w // 4)
        assert all(torch.isfinite(t).all() for t in out)

    def test_every_parameter_gets_a_gradient(self):
        torch.manual_seed(0)
        model = self.build().train()
        out = model(*self._inputs())
        p2, p4 = out.aux_probabilities()
        (out.final.mean() + out.edge.mean() + p2.mean() + p4.mean()).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"parameters without gradient: {missing[:5]}"
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    def test_save_and_load_round_trip(self, tmp_path):
        torch.manual_seed(0)
        model = self.build().eval()
        folder = model.save_pretrained(tmp_path / "saved")
        again = msrfnet.MSRFNet.from_pretrained(folder)
        assert (again.variant, again.num_classes) == (model.variant, model.num_classes)
        image, canny = self._inputs(1)
        with torch.no_grad():
            torch.testing.assert_close(again(image, canny).final, model(image, canny).final)

    def test_one_input_model_equals_two_inputs(self):
        if self.num_classes != 1:
            return  # the one-input model returns the probability of a one-class mask
        torch.manual_seed(0)
        model = self.build().eval()
        pixels = (torch.rand(*self.shape[:1], 3, *self.shape[1:]) * 255).round().to(torch.uint8)
        edges = msrfnet.canny(pixels, 10, 100)
        with torch.no_grad():
            two = torch.sigmoid(model(pixels.float() / 255, edges).final)
            one = ImageToProbability(model, 10, 100)(pixels)
        torch.testing.assert_close(one, two)
