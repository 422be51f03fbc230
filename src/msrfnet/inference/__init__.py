"""Applying a trained model: ``Segmenter`` (any image in, mask at its size out; the one path the
commands use), the runners, ``msrf predict`` (``predict``, its files in ``predict_files``),
``msrf test`` (``test``), ``msrf evaluate`` (``evaluate``) and objects from masks
(``instances``)."""

__all__: list[str] = []  # the modules are the API: runners, segmenter, predict, test, evaluate, …
