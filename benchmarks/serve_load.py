"""A bounded load test of ``msrf serve`` on loopback: throughput, latency percentiles, errors.

Starts ``msrf serve`` as a subprocess on 127.0.0.1 (a free port), waits for ``GET /health``,
sends 2 warm-up requests (not counted), then ``--requests`` uploads of bundled sample images
(``--size`` crop or resize) from ``--concurrency`` client threads, each ``POST /predict`` (the PNG
mask by default). Prints one JSON object per run; the exit status is 1 when any request failed.

    python benchmarks/serve_load.py --tiny --size 64          # random 32² model: the server's cost
    python benchmarks/serve_load.py --size 256                # the shipped weights (256² input)

Only loopback addresses are used; nothing else is contacted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tiny_weights(folder: Path, image_size: int = 32) -> Path:
    """A randomly initialised MSRF-Net saved with a small input size (the server's own cost)."""
    import torch

    from msrfnet.config import Config
    from msrfnet.model import MSRFNet
    from msrfnet.weights.checkpoint import save_weights

    torch.manual_seed(0)
    path = folder / "tiny.safetensors"
    save_weights(path, MSRFNet().eval(), Config(image_size=image_size))
    return path


def sample_pngs(size: int) -> list[bytes]:
    """The bundled test images, resized to size×size, as PNG bytes."""
    from PIL import Image

    from msrfnet.data import sample_root

    out = []
    for f in sorted((sample_root() / "test" / "images").glob("*.png")):
        buf = io.BytesIO()
        Image.open(f).convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = "msrfloadtest" + os.urandom(8).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    ctype: str | None = None,
    timeout: float = 600,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"msrf serve exited with code {proc.returncode}")
        try:
            status, body = request(port, "GET", "/health", timeout=5)
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("msrf serve did not answer /health in time")


def load(port: int, images: list[bytes], n: int, concurrency: int, query: str) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body, ctype = multipart(images[i % len(images)], f"sample{i % len(images)}.png")
        t0 = time.perf_counter()
        try:
            status, payload = request(port, "POST", "/predict" + query, body, ctype)
        except OSError as err:
            status, payload = 0, str(err).encode()
        took = time.perf_counter() - t0
        with lock:
            latencies.append(took)
            if status != 200:
                errors.append(f"{status}: {payload[:200]!r}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "requests": n,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "throughput_rps": round(n / wall, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1),
            "max": round(float(lat.max()), 1),
        },
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="weights for msrf serve (default: the shipped ones)")
    p.add_argument("--tiny", action="store_true", help="a random model with a 32² input instead")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="side of the uploaded images (pixels)")
    p.add_argument("--query", default="", help="e.g. ?format=json&instances=true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(tiny_weights(Path(tmp))) if args.tiny else args.weights
        port = free_port()
        cmd = [sys.executable, "-m", "msrfnet.cli", "serve", "--host", HOST, "--port", str(port)]
        if weights:
            cmd += ["--weights", weights]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            health = wait_healthy(port, proc)
            startup = time.perf_counter() - t0
            images = sample_pngs(args.size)
            warm = load(port, images, 2, 1, args.query)
            result = load(port, images, args.requests, args.concurrency, args.query)
            after = json.loads(request(port, "GET", "/health")[1])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    import torch

    report = {
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/serve_load.py " + " ".join(argv or sys.argv[1:]),
        "model": health["model"],
        "model_input": health["image_size"],
        "image": f"{args.size}×{args.size} PNG (the 5 bundled test images, resized)",
        "query": args.query or "(PNG mask)",
        "startup_s": round(startup, 1),
        "warmup_errors": warm["errors"],
        **result,
        "server_model_seconds_per_request": round(
            after["model_seconds"] / max(1, after["requests"]), 4
        ),
        "hardware": f"{os.cpu_count()} CPU cores ({cpu_name()}), no GPU used",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 1 if result["errors"] or warm["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
