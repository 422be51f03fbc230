"""``msrf bench``: training and inference throughput, memory and MFU, baseline against the
optimized path (``run``), its timing loops (``timing``) and the data loader's rate (``data``)."""

__all__: list[str] = []
