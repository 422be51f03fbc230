"""``msrf serve``'s API through FastAPI's test client, with a tiny random model (32² input).

A good image gives the Segmenter's own mask at the image's size; every bad input a 400 with a
one-line JSON error naming the problem; uploads over the byte or pixel limit a 413; 20 concurrent
requests all succeed while the instrumented model never runs twice at once.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="msrf serve needs the serve extra (fastapi)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

with warnings.catch_warnings():  # Starlette ≥ 1.x asks for "httpx2"; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from fastapi.testclient import TestClient  # noqa: E402

from msrfnet import cli  # noqa: E402
from msrfnet.data import read_image, sample_root  # noqa: E402
from msrfnet.serve.app import STATIC, create_app  # noqa: E402
from msrfnet.serve.service import (  # noqa: E402
    MAX_MB_FLAG,
    MAX_MEGAPIXELS_FLAG,
    InferenceService,
    Segmenter,
    model_card,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from _model_helpers import make_weights

    return make_weights(tmp_path_factory.mktemp("serve") / "tiny.safetensors", image_size=32)


@pytest.fixture(scope="module")
def segmenter(weights):
    return Segmenter.from_pretrained(weights, device="cpu", exact=True)


def client_for(segmenter, weights, **limits) -> TestClient:
    service = InferenceService(segmenter, card=model_card(weights, segmenter), **limits)
    return TestClient(create_app(service))


@pytest.fixture(scope="module")
def client(segmenter, weights):
    return client_for(segmenter, weights)


def sample_rgb(h: int = 50, w: int = 70) -> np.ndarray:
    """A real nuclei crop, not square and not a multiple of the model size."""
    first = sorted((sample_root() / "test" / "images").glob("*.png"))[0]
    return np.ascontiguousarray(read_image(first)[:h, :w])


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def upload(client, data: bytes, name: str = "cells.png", query: str = ""):
    return client.post(f"/predict{query}", files={"image": (name, data, "image/png")})


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_good_image_gives_the_segmenters_mask_at_its_size(client, segmenter):
    rgb = sample_rgb()
    r = upload(client, png(rgb))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = decode(r.content)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    expected = segmenter(rgb).mask
    assert expected.sum() > 50 and (~expected).sum() > 50  # a real mix, not all one class
    assert np.array_equal(mask == 255, expected)


def test_json_summary_objects_and_page_layers(client, segmenter):
    rgb = sample_rgb(64, 64)
    r = upload(client, png(rgb), query="?format=json&instances=true&images=true&threshold=0.55")
    assert r.status_code == 200
    answer = r.json()
    assert (answer["width"], answer["height"], answer["threshold"]) == (64, 64, 0.55)
    mask = segmenter(rgb, threshold=0.55).mask
    assert answer["foreground_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
    assert sum(answer["probability"]["histogram"]["counts"]) == 64 * 64
    objects = answer["objects"]
    assert objects["count"] == len(objects["table"]) and objects["count"] >= 1
    assert sum(row["area"] for row in objects["table"]) <= mask.sum()
    layers = {k: decode(base64.b64decode(v.split(",", 1)[1])) for k, v in answer["images"].items()}
    assert set(layers) == {"display", "mask", "probability", "outlines"}
    assert layers["display"].shape == (64, 64, 3)
    assert np.array_equal(layers["mask"] == 255, mask)
    assert all(layers[k].shape == (64, 64) for k in ("mask", "probability", "outlines"))


def test_instances_png_is_a_uint16_label_image(client):
    r = upload(client, png(sample_rgb()), query="?instances=true")
    assert r.status_code == 200
    labels = decode(r.content)
    assert labels.shape == (50, 70) and labels.dtype in (np.uint16, np.int32)
    assert sorted(np.unique(labels))[:2] == [0, 1]
    assert len(np.unique(labels)) == labels.max() + 1  # consecutive labels


def test_health_model_card_and_page(client, weights):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["image_size"] == 32
    card = client.get("/model").json()
    assert card["weights"]["file"] == weights.name and len(card["weights"]["sha256"]) == 64
    assert card["model"]["image_size"] == 32 and "training" in card and "metrics" in card
    page = client.get("/")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<input id="file" type="file"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for f in STATIC.iterdir():  # nothing from the network: no absolute URLs in the page's files
        text = f.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name


def float_tiff_with_nan() -> bytes:
    arr = np.ones((20, 20), np.float32)
    arr[3, 4] = np.nan
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


BAD = {
    "garbage": (
        {"files": {"image": ("x.png", b"this is not an image", "image/png")}},
        "x.png: not an image",
    ),
    "empty": ({"files": {"image": ("e.png", b"", "image/png")}}, "e.png: empty file"),
    "truncated": (
        {"files": {"image": ("t.png", png(sample_rgb())[:300], "image/png")}},
        "t.png: corrupt or truncated",
    ),
    "nan tiff": (
        {"files": {"image": ("n.tif", float_tiff_with_nan(), "image/tiff")}},
        "NaN or infinite",
    ),
    "no file": ({"data": {"note": "hello"}, "files": {"x": (None, "y")}}, "no image file"),
    "not multipart": (
        {"content": b"abc", "headers": {"content-type": "text/plain"}},
        "expected a multipart/form-data upload",
    ),
    "two files": (
        {
            "files": [
                ("a", ("a.png", png(sample_rgb()), "image/png")),
                ("b", ("b.png", png(sample_rgb()), "image/png")),
            ]
        },
        "Too many files",
    ),
}
BAD_QUERY = {  # issue 20: "name value: why", each by the rule of its command-line option
    "?format=xml": "format xml: must be one of png, json",
    "?threshold=abc": "threshold abc: must be a number",
    "?threshold=1.5": "must lie in [0, 1]",
    "?instances=maybe": "instances maybe: must be true or false",
    "?min_size=-3": "min_size -3: must be 0 or more",
    "?colour=red": "unknown parameter 'colour'",
}


def assert_one_line_error(r, status: int, words: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    assert words in body["error"], body["error"]


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_each_bad_upload_is_a_400_with_one_line(client, case):
    kwargs, words = BAD[case]
    assert_one_line_error(client.post("/predict", **kwargs), 400, words)


@pytest.mark.parametrize("query", BAD_QUERY)
def test_each_bad_parameter_is_a_400_with_one_line(client, query):
    assert_one_line_error(upload(client, png(sample_rgb()), query=query), 400, BAD_QUERY[query])


def test_a_bad_tiling_or_objects_query_is_the_command_lines_rule_and_counted(segmenter, weights):
    client = client_for(segmenter, weights)
    for query, words in {
        "?overlap=0.95": "overlap 0.95: must lie in [0, 0.9] (0.25 is the usual choice)",
        "?tile=60": "tile 60: must be a positive multiple of 8",
        "?seed_distance=0": "seed_distance 0: must be a positive whole number, got '0'",
    }.items():
        assert_one_line_error(upload(client, png(sample_rgb()), query=query), 400, words)
    assert client.get("/health").json()["errors"] == 3


def test_the_declared_query_parameters_are_the_documented_ones():
    import inspect

    from msrfnet.serve.app import predict_options
    from msrfnet.serve.service import QUERY

    declared = set(inspect.signature(predict_options).parameters) - {"request"}
    assert declared == set(QUERY)


def test_tiling_asked_by_the_query_runs_tiled(client, segmenter):
    import copy

    rgb = sample_rgb(32, 40)  # two 32² windows
    r = upload(client, png(rgb), query="?format=json&tile=32&overlap=0.5")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["tiling"] == {"tile": 32, "overlap": 0.5, "scale": None}
    tiled = copy.copy(segmenter)
    tiled.set_tiling(32, 0.5, None)
    assert answer["foreground_fraction"] == pytest.approx(tiled(rgb).mask.mean(), abs=1e-6)
    plain = upload(client, png(rgb), query="?format=json").json()
    assert plain["tiling"] is None and segmenter.tiling is None  # the shared one is unchanged


def test_objects_take_the_option_groups_defaults_unless_given(client):
    from msrfnet.option_groups import MIN_SIZE, SEED_DISTANCE

    data = png(sample_rgb(64, 64))
    default = upload(client, data, query="?format=json&instances=true").json()["objects"]
    assert (default["min_size"], default["seed_distance"]) == (MIN_SIZE, SEED_DISTANCE)
    given = upload(client, data, query="?format=json&instances=1&min_size=0").json()["objects"]
    assert (given["min_size"], given["seed_distance"]) == (0, SEED_DISTANCE)
    assert given["count"] >= default["count"]  # nothing dropped for its size
    merged = upload(client, data, query="?format=json&instances=on&seed_distance=9").json()
    assert (merged["objects"]["min_size"], merged["objects"]["seed_distance"]) == (MIN_SIZE, 9)


def test_msrf_serve_refuses_a_bad_limit_naming_its_option(weights):
    from msrfnet.errors import MSRFError
    from msrfnet.serve.app import start

    with pytest.raises(MSRFError, match=f"^{MAX_MB_FLAG} 0: must be a finite number above 0"):
        start(weights, max_mb=0)
    with pytest.raises(MSRFError, match=f"^{MAX_MEGAPIXELS_FLAG} nan: must be a finite number"):
        start(weights, max_megapixels=float("nan"))


def test_uploads_over_the_byte_or_pixel_limit_are_413(segmenter, weights):
    data = png(sample_rgb())
    small = client_for(segmenter, weights, max_bytes=len(data) // 2)
    assert_one_line_error(upload(small, data), 413, "over this server's limit")

    def chunked():  # no Content-Length: the server counts while reading
        body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="c.png"\r\n\r\n'
        yield body
        yield data
        yield b"\r\n--b--\r\n"

    r = small.post(
        "/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_one_line_error(r, 413, "over this server's limit")
    few_pixels = client_for(segmenter, weights, max_pixels=50 * 70 - 1)
    r = upload(few_pixels, data, "big.png")
    assert_one_line_error(r, 413, "big.png: 70×50 pixels")
    assert f"(msrf serve {MAX_MEGAPIXELS_FLAG} 0.003499)" in r.json()["error"]
    assert upload(client_for(segmenter, weights, max_pixels=50 * 70), data).status_code == 200


class CountingRunner:
    """Wraps the model runner: records how many calls overlap (must never be more than one)."""

    def __init__(self, runner):
        self.runner, self.active, self.most, self.calls = runner, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, images, canny):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.02)  # widen the window in which a second run would overlap
            return self.runner(images, canny)
        finally:
            with self.lock:
                self.active -= 1


def test_twenty_concurrent_requests_succeed_and_never_run_the_model_in_parallel(weights):
    segmenter = Segmenter.from_pretrained(weights, device="cpu", exact=True)
    counter = segmenter.runner = CountingRunner(segmenter.runner)
    client = client_for(segmenter, weights)
    images = [png(sample_rgb(40 + i, 60)) for i in range(20)]
    start = threading.Barrier(20)

    def one(i):
        start.wait()
        return upload(client, images[i], f"img{i}.png", "?format=json")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert [r.status_code for r in answers] == [200] * 20
    assert sorted(r.json()["height"] for r in answers) == list(range(40, 60))
    assert counter.calls == 20 and counter.most == 1
    assert client.get("/health").json()["requests"] == 20


def test_shipped_weights_card_names_data_and_metrics(segmenter):
    card = model_card(None, segmenter)  # the shipped file's metadata and MODEL_CARD.md
    assert card["weights"]["shipped"] and card["weights"]["file"] == "msrfnet_kdsb.safetensors"
    assert "Data Science Bowl" in card["card"] and "Test metrics" in card["card"]
    assert card["metrics"]["val/dsc"] > 0.9 and card["training"]["batch_size"] == 16


def test_a_large_upload_leaves_no_file_behind(client, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where Starlette would spool
    noise = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    data = png(noise)
    assert len(data) > 1024 * 1024  # over Starlette's in-memory spool size
    assert upload(client, data, "noise.png").status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_msrf_serve_loads_the_model_once_on_loopback_by_default(weights, monkeypatch):
    import msrfnet.serve.app as app_module

    seen = {}
    monkeypatch.setattr(
        app_module,
        "run",
        lambda service, host, port: seen.update(service=service, host=host, port=port),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        "serve",
        "--weights",
        str(weights),
        "--port",
        str(port),
        "--max-mb",
        "1",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", port)
    service = seen["service"]
    assert service.max_bytes == 1024 * 1024 and service.max_pixels == 25_000_000
    assert service.card["weights"]["file"] == weights.name


def test_msrf_serve_without_the_extra_prints_one_line(monkeypatch, capsys):
    import msrfnet.serve

    monkeypatch.setattr(msrfnet.serve, "missing_extra", lambda: msrfnet.serve.MISSING_EXTRA)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "msrfnet[serve]"' in err[0]


def test_msrf_serve_on_a_busy_port_says_so_before_loading(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert (
            cli.main(["serve", "--weights", "/no/such/weights.safetensors", "--port", str(port)])
            == 2
        )
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there" in err and "Traceback" not in err


def test_display_rgb_makes_dark_fluorescence_visible():
    from msrfnet.overlay import display_rgb

    dark = np.zeros((40, 40, 3), np.uint8)
    dark[10:20, 10:20] = 40  # nuclei at 40 of 255: nearly invisible as is
    shown = display_rgb(dark)
    assert shown.dtype == np.uint8 and shown[15, 15].min() == 255 and shown[0, 0].max() == 0
    flat = np.full((5, 5, 3), 7, np.uint8)
    assert np.array_equal(display_rgb(flat), flat)
    rgb = sample_rgb()
    assert display_rgb(rgb).shape == rgb.shape
