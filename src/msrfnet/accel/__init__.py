"""Runtime speed-ups that compute the same function: the CPU inference copy (``cpu``: bfloat16,
channels-last, sub-pixel up-convolutions, denormal flushing) and the runner of an int8 AOTInductor
package (``pt2_runner``). The exports that produce files (ONNX, int8, bioimage.io) are
:mod:`msrfnet.export`."""

__all__: list[str] = []
