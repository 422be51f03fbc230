"""Weight files and where they are found: our checkpoint formats (``checkpoint``), which file a
command uses (``resolve``: the shipped weights, a run folder, the newest run), and the Hugging Face
folder layout (``hub``). No network class is needed to read or write them; building the network
from them is :mod:`msrfnet.model.loading`."""

__all__: list[str] = []
