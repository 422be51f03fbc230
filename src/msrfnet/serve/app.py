"""The FastAPI application of ``msrf serve`` (needs the ``serve`` extra).

Endpoints (every error is JSON ``{"error": "<one line>"}``):

* ``POST /predict`` — a multipart upload with one image file (any field name, e.g.
  ``curl -F image=@cells.png``). Query: ``format=png`` (default: the mask as a 0/255 PNG at the
  image's size; with ``instances=true`` a uint16 label PNG) or ``format=json`` (size, foreground
  fraction, probability summary, and with ``instances=true`` the object count and table);
  ``images=true`` adds the page's layers as PNG data URLs; ``threshold``, ``min_size``,
  ``seed_distance``, and ``tile``, ``overlap``, ``scale`` to predict tiled (:data:`QUERY
  <msrfnet.serve.service.QUERY>`; each checked by the rule of the ``msrf predict`` option of that
  name, with its message). 400: not multipart, no file, not an image, an unknown or bad
  parameter. 413: over ``--max-mb`` (checked from Content-Length and while reading) or
  ``--max-megapixels`` (from the image header, before decoding).
* ``GET /health`` — status, model, counters, limits. ``GET /model`` — the model card.
* ``GET /`` — the page (``static/``: plain HTML, JS and CSS; a Content-Security-Policy allows
  nothing but this server, so the page cannot reach the network).

The upload is read into memory (bounded); Starlette spools file parts over 1 MiB to an unlinked
temporary file, closed (so removed) before the answer. Nothing else touches the disk.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from msrfnet import options as opt
from msrfnet.errors import MSRFError
from msrfnet.serve.service import (
    MAX_MB_FLAG,
    MAX_MEGAPIXELS_FLAG,
    QUERY,
    BadRequest,
    InferenceService,
    Options,
    TooLarge,
    parse_options,
    unknown_parameter,
)

__all__ = [
    "STATIC",
    "CSP",
    "NO_FILE",
    "error",
    "upload_name",
    "read_body",
    "read_upload",
    "predict_options",
    "create_app",
    "run",
    "check_port_free",
    "start",
]

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
NO_FILE = (
    "no image file in the upload: send it as a multipart file field, "
    "e.g. curl -F image=@cells.png http://127.0.0.1:8000/predict"
)
log = logging.getLogger("msrfnet.serve")


def error(status: int, message: str) -> JSONResponse:
    """The one error shape: ``{"error": "..."}`` with the message's first line."""
    line = (message.strip().splitlines() or ["error"])[0]
    return JSONResponse({"error": line}, status_code=status)


def upload_name(filename: str | None) -> str:
    """The client's file name, reduced to a safe base name for messages and JSON."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[^\w.\- ()+]", "_", base).strip()[:120]
    return base or "upload"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with :class:`TooLarge` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(
            f"upload of {int(declared):,} bytes: over this server's limit of "
            f"{limit:,} bytes (msrf serve {MAX_MB_FLAG})"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(
                f"upload over this server's limit of {limit:,} bytes (msrf serve {MAX_MB_FLAG})"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """(file bytes, file name) of the one image file in a multipart request."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise BadRequest(
            f"expected a multipart/form-data upload, got "
            f"{ctype.split(';')[0] or 'no content type'}; {NO_FILE}"
        )
    body = await read_body(request, limit)
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=20)
    except HTTPException as err:  # Starlette's multipart errors ("Too many files", ...)
        raise BadRequest(f"malformed upload: {err.detail}") from None
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise BadRequest(NO_FILE)
        return await files[0].read(), upload_name(files[0].filename)
    finally:
        await form.close()


def predict_options(
    request: Request,
    format: str | None = Query(None, description=QUERY["format"]),
    instances: str | None = Query(None, description=QUERY["instances"]),
    images: str | None = Query(None, description=QUERY["images"]),
    threshold: str | None = Query(None, description=QUERY["threshold"]),
    min_size: str | None = Query(None, description=QUERY["min_size"]),
    seed_distance: str | None = Query(None, description=QUERY["seed_distance"]),
    tile: str | None = Query(None, description=QUERY["tile"]),
    overlap: str | None = Query(None, description=QUERY["overlap"]),
    scale: str | None = Query(None, description=QUERY["scale"]),
) -> Options:
    """``POST /predict``'s query parameters (FastAPI reads the declared ones), checked by the
    rules of the command line's options (:func:`~msrfnet.serve.service.parse_options`); an
    undeclared one is refused rather than ignored. Each is text, None when not given: the
    option's own default applies. Raises :class:`BadRequest` (HTTP 400)."""
    given = {
        "format": format,
        "instances": instances,
        "images": images,
        "threshold": threshold,
        "min_size": min_size,
        "seed_distance": seed_distance,
        "tile": tile,
        "overlap": overlap,
        "scale": scale,
    }
    unknown = sorted(set(request.query_params) - set(given))
    if unknown:
        raise unknown_parameter(unknown[0])
    return parse_options(given)


def create_app(service: InferenceService) -> FastAPI:
    """The application around one :class:`InferenceService` (one model, shared by requests)."""
    app = FastAPI(title="msrfnet", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException):
        return error(err.status_code, str(err.detail))

    @app.exception_handler(MSRFError)
    async def refused(_request: Request, err: MSRFError):
        """A bad parameter or upload (400), one over a limit (413), or an input the model refused
        (400: the client's problem), as one line."""
        service.count(error=True)
        return error(getattr(err, "status", 400), str(err))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception):  # pragma: no cover - a bug
        log.exception("msrf serve: internal error")
        return error(500, f"internal error: {type(err).__name__}: {err}")

    @app.post("/predict")
    async def predict(request: Request, opts: Annotated[Options, Depends(predict_options)]):
        data, name = await read_upload(request, service.max_bytes)
        kind, body = await run_in_threadpool(service.predict, data, name, opts)
        service.count(error=False)
        if kind == "png":
            return Response(
                body,
                media_type="image/png",
                headers={"Content-Disposition": f'inline; filename="{name}.mask.png"'},
            )
        return JSONResponse(body)

    @app.get("/health")
    def health():
        return service.health()

    @app.get("/model")
    def model():
        return service.card

    @app.get("/")
    def page():
        headers = {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def run(service: InferenceService, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted: one process, one model (uvicorn, no reload, no extra workers)."""
    import uvicorn

    print(f"msrf serve: http://{host}:{port}/ ({service.segmenter.description}); Ctrl+C stops")
    uvicorn.run(
        create_app(service), host=host, port=port, workers=1, log_level="info", access_log=False
    )


def check_port_free(host: str, port: int) -> None:
    """A one-line :class:`MSRFError` now, rather than uvicorn's log line after the model loaded."""
    import socket

    if not 1 <= port <= 65535:
        raise MSRFError(f"--port {port}: must be 1..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise MSRFError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise MSRFError(
                f"--host {host} --port {port}: cannot listen there ({err.strerror}); "
                "choose another --port"
            ) from None


def start(
    weights=None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    exact: bool = False,
    max_mb: float = 32,
    max_megapixels: float = 25,
) -> None:
    """``msrf serve``: load the model once, then serve it until Ctrl+C."""
    from msrfnet.serve.service import InferenceService, Segmenter, model_card

    for flag, value in ((MAX_MB_FLAG, max_mb), (MAX_MEGAPIXELS_FLAG, max_megapixels)):
        opt.check(opt.positive_float, value, f"{flag} {value}")
    check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "msrf serve: listening on %s: anyone who can reach this address can use "
            "the service (no authentication); put a reverse proxy in front "
            "(docs/DEPLOY.md)",
            host,
        )
    segmenter = Segmenter.from_pretrained(weights, device=device, exact=exact)
    service = InferenceService(
        segmenter,
        card=model_card(weights, segmenter),
        max_bytes=int(max_mb * 1024 * 1024),
        max_pixels=int(max_megapixels * 1_000_000),
    )
    run(service, host=host, port=port)
