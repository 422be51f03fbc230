"""Every model configuration through the shared checks of ``_model_tester.ModelTester``; the
official variant's stored input/output is the Keras fixture
(tests/model/test_fixture_equivalence.py)."""

from __future__ import annotations

from _model_tester import ModelTester

from msrfnet import MSRFNet


class TestOfficial(ModelTester):
    def build(self):
        return MSRFNet(variant="official")


class TestClean(ModelTester):
    def build(self):
        return MSRFNet(variant="clean")


class TestTwoClasses(ModelTester):
    num_classes = 2

    def build(self):
        return MSRFNet(num_classes=2)
