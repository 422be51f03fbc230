"""Acceleration and export: exact faster forms of the model (``subpixel``), the CPU inference copy
(``cpu``: bfloat16, denormal flushing), ONNX (``onnx``: one input by default), int8 (``onnx_int8``
through onnxruntime, ``pt2_int8`` through torchao + AOTInductor, run by ``pt2_runner``) and the
BioImage Model Zoo package (``bioimageio``)."""

__all__: list[str] = []
