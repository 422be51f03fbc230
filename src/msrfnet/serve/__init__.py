"""``msrf serve``: one loaded model behind a small HTTP API and a web page to look at predictions.

* :mod:`.service` — the framework-free part: decode an upload (same rules as files on disk),
  run the one shared :class:`~msrfnet.inference.segmenter.Segmenter` under a lock, build the PNG /
  JSON answers, the model card.
* :mod:`.app` — the FastAPI application (``POST /predict``, ``GET /health``, ``GET /model``,
  ``GET /`` the page from ``static/``); FastAPI, uvicorn and python-multipart are the optional
  ``serve`` extra (``pip install "msrfnet[serve]"``), imported only here.
"""

from __future__ import annotations

__all__ = ["MISSING_EXTRA", "missing_extra"]

MISSING_EXTRA = (
    'msrf serve needs the "serve" extra: pip install "msrfnet[serve]" '
    "(fastapi, uvicorn, python-multipart)"
)


def missing_extra() -> str | None:
    """The one-line install hint when FastAPI, uvicorn or python-multipart is absent, else None."""
    import importlib.util

    def found(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    # python-multipart is imported as ``python_multipart`` since 0.0.13, ``multipart`` before
    if found("fastapi") and found("uvicorn") and (found("python_multipart") or found("multipart")):
        return None
    return MISSING_EXTRA
