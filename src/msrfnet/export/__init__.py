"""Exports of a trained model for other runtimes and tools, behind ``msrf export``: ONNX
(``onnx``: one uint8 image input by default), int8 ONNX (``onnx_int8``, onnxruntime), an int8
AOTInductor package (``pt2_int8``, torchao; run by :mod:`msrfnet.accel.pt2_runner`) and the
BioImage Model Zoo package (``bioimageio``). The runtime speed-ups the exports build on live in
:mod:`msrfnet.accel`."""

__all__: list[str] = []
