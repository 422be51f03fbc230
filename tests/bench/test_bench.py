"""``msrf bench`` and the exact speed-ups (``msrfnet.model.upsampling``, ``msrfnet.accel.cpu``), on
small CPU inputs.

The full-size CPU bench (256², the documented CPU figure) is marked slow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _logs import said

from msrfnet.accel.cpu import CPUInferenceModel, optimize_for_cpu_inference
from msrfnet.bench.plan import BenchOptions, plan_bench
from msrfnet.bench.run import format_table, model_flops, run_bench
from msrfnet.errors import MSRFError
from msrfnet.model import MSRFNet
from msrfnet.model.layers import SameConvTranspose2d
from msrfnet.model.upsampling import SubPixelConvTranspose2d

ROOT = Path(__file__).resolve().parents[2]

REQUIRED = {
    "device": str,
    "train_img_s": float,
    "infer_img_s": float,
    "baseline_train_img_s": float,
    "baseline_infer_img_s": float,
    "infer_s_per_img": float,
    "baseline_infer_s_per_img": float,
    "torch": str,
    "batch_size": int,
    "image_size": int,
    "compile_status": str,
    "flops_per_img_fwd": float,
    "flops_per_img_train": float,
    "date": str,
    "peak_tflops": float,
    "mfu": float,
    "baseline_mfu": float,
    "train_tflops": float,
    "infer_max_prob_diff": float,
    "saved_gib_per_train_img": float,
    "baseline_saved_gib_per_train_img": float,
}


# robust on a busy 2-core CI machine; the bench caps its threads at min(2, this)
pytestmark = pytest.mark.usefixtures("one_thread")


# --- sub-pixel transposed convolution -------------------------------------------------------------
@pytest.mark.parametrize("kernel", [1, 2, 3, 4])
def test_subpixel_equals_transposed_conv_forward_and_backward(kernel):
    torch.manual_seed(kernel)
    ref = SameConvTranspose2d(6, 5, kernel).double()
    with torch.no_grad():
        ref.bias.normal_()
    sub = SubPixelConvTranspose2d(6, 5, kernel).double()
    assert list(sub.state_dict()) == list(ref.state_dict())
    sub.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    y_ref, y_sub = ref(x), sub(x)
    assert y_ref.shape == y_sub.shape == (2, 5, 14, 18)
    torch.testing.assert_close(y_sub, y_ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y_ref)
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)
    gx_sub, gw_sub, gb_sub = torch.autograd.grad(y_sub, (x, sub.weight, sub.bias), g)
    for a, b in ((gx_sub, gx_ref), (gw_sub, gw_ref), (gb_sub, gb_ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_subpixel_channels_last_and_bf16():
    torch.manual_seed(0)
    ref = SameConvTranspose2d(8, 4, 3)
    sub = SubPixelConvTranspose2d(8, 4, 3)
    sub.load_state_dict(ref.state_dict())
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    y = sub(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = sub(x)
    assert yb.dtype == torch.bfloat16
    assert (yb.float() - ref(x)).abs().max() < 0.05


@pytest.mark.parametrize(
    "upsampling,count", [("subpixel", 40), ("subpixel-onnx", 43), ("subpixel-inductor", 43)]
)
def test_subpixel_upsampling_keeps_the_function_and_the_state_dict(upsampling, count):
    torch.manual_seed(0)
    model = MSRFNet().double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    canny = (torch.rand(1, 1, 8, 8) > 0.8).double()
    with torch.no_grad():
        ref = model(x, canny)
    fast = model.rebuild(upsampling=upsampling)
    # the DSDF up-exchanges (10 blocks × 4), and for the export forms the decoder's three 4×4
    assert sum(isinstance(m, SubPixelConvTranspose2d) for m in fast.modules()) == count
    assert list(fast.state_dict()) == list(model.state_dict())
    assert not fast.training and next(fast.parameters()).dtype == torch.float64
    with torch.no_grad():
        out = fast(x, canny)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    fast.load_state_dict(MSRFNet().double().state_dict())  # plain checkpoints load (strict)
    assert sum(type(m) is SameConvTranspose2d for m in model.modules()) == 45  # model unchanged


def test_frozen_subpixel_weight_is_a_constant_that_follows_the_dtype():
    torch.manual_seed(0)
    layer = SubPixelConvTranspose2d(4, 3, 3, target="onnx")
    x = torch.randn(1, 4, 5, 5)
    y = layer(x)
    layer.freeze()
    assert layer.frozen_weight.grad_fn is None and "frozen_weight" not in layer.state_dict()
    torch.testing.assert_close(layer(x), y)
    layer.double()
    assert layer.frozen_weight.dtype == torch.float64
    torch.testing.assert_close(layer(x.double()).float(), y, rtol=1e-5, atol=1e-6)


def test_optimize_for_cpu_inference_float32_and_bf16():
    torch.manual_seed(0)
    model = MSRFNet().eval()
    x = torch.rand(1, 3, 32, 32)
    canny = (torch.rand(1, 1, 32, 32) > 0.8).float()
    with torch.inference_mode():
        ref = torch.sigmoid(model(x, canny).final)
        fast32 = optimize_for_cpu_inference(model, dtype=torch.float32)
        assert isinstance(fast32, CPUInferenceModel) and not fast32.training
        out32 = fast32(x, canny)
        assert out32.final.dtype == torch.float32 and out32.final.is_contiguous()
        torch.testing.assert_close(torch.sigmoid(out32.final), ref, rtol=0, atol=1e-5)
        out16 = optimize_for_cpu_inference(model, dtype=torch.bfloat16)(x, canny)
        assert out16.final.dtype == torch.float32
        assert (torch.sigmoid(out16.final) - ref).abs().max() < 0.05
    # the original is untouched
    assert sum(type(m) is SameConvTranspose2d for m in model.modules()) == 45
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError):
        optimize_for_cpu_inference(model, dtype=torch.float16)


# --- the bench ------------------------------------------------------------------------------------
def _check_result(r: dict, batch: int, size: int) -> None:
    for key, typ in REQUIRED.items():
        assert key in r, key
        assert isinstance(r[key], typ), (key, r[key])
    assert r["device"] == "cpu" and r["batch_size"] == batch and r["image_size"] == size
    for key in (
        "train_img_s",
        "infer_img_s",
        "baseline_train_img_s",
        "baseline_infer_img_s",
        "infer_s_per_img",
        "baseline_infer_s_per_img",
        "peak_tflops",
        "mfu",
        "train_tflops",
        "flops_per_img_fwd",
    ):
        assert r[key] > 0 and math.isfinite(r[key]), key
    assert r["peak_gib_per_train_img"] is None  # no device-memory figure on the CPU
    assert 2.5 < r["flops_per_img_train"] / r["flops_per_img_fwd"] < 3.5
    assert r["infer_max_prob_diff"] < 0.05


def test_model_flops_match_the_documented_count():
    fwd, train = model_flops(256)
    assert fwd == pytest.approx(189.1e9, rel=1e-3)
    assert train == pytest.approx(3 * fwd, rel=0.01)


def test_run_bench_tiny_cpu(one_thread):
    with said() as lines:
        r = run_bench(
            BenchOptions(device="cpu", image_size=32, batch_size=2, steps=1, compile=False)
        )
    _check_result(r, 2, 32)
    assert r["compile_status"] == "off" and r["threads"] == 1
    # bf16 halves every saved activation; the memory-efficient DSDF blocks keep less on top of that
    assert r["memory_efficient"] is True
    assert 0 < r["saved_gib_per_train_img"] < 0.35 * r["baseline_saved_gib_per_train_img"]
    assert any(line.startswith("baseline") for line in lines) and any(
        line.startswith("optimized") for line in lines
    )
    assert lines[-len(format_table(r)) :] == format_table(r)  # after the progress lines


def test_cli_bench_json_prints_exactly_one_object(one_thread, capsys):
    from msrfnet.cli import main

    rc = main(
        [
            "bench",
            "--device",
            "cpu",
            "--json",
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "1",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    r = json.loads(out)  # fails on anything besides one JSON document
    assert out.strip().count("\n") == 0
    _check_result(r, 2, 32)
    assert r["compile"] is True and r["compile_status"].startswith("skipped on cpu")


def test_json_mode_keeps_stray_output_off_stdout(one_thread, capfd):
    def noisy(step, device):
        print("python-level noise")
        os.write(1, b"fd-level noise\n")
        return {"ok": True}

    options = BenchOptions(
        device="cpu",
        image_size=16,
        batch_size=1,
        steps=1,
        compile=False,
        baseline=False,
        inference=False,
    )
    r = run_bench(options, as_json=True, train_hook=noisy)
    out, err = capfd.readouterr()
    assert json.loads(out) == json.loads(json.dumps(r))
    assert r["train_hook"] == {"ok": True}
    assert "python-level noise" in err and "fd-level noise" in err


def test_compile_failure_falls_back_to_eager(one_thread, monkeypatch):
    def broken_compile(module, **kwargs):
        def fn(*args, **kw):
            raise RuntimeError("simulated inductor failure\nsecond line")

        return fn

    monkeypatch.setattr(torch, "compile", broken_compile)
    r = run_bench(
        BenchOptions(
            device="cpu",
            image_size=16,
            batch_size=1,
            steps=1,
            compile=True,
            compile_cpu=True,
            baseline=False,
        )
    )
    assert r["compile_status"].startswith(
        "fallback to eager: RuntimeError: simulated inductor failure"
    )
    assert r["infer_compile_status"].startswith("fallback to eager")
    assert r["train_img_s"] > 0 and r["baseline_train_img_s"] is None and r["speedup_train"] is None


@pytest.mark.parametrize(
    "interleave", [False, True]
)  # False = the CUDA order, exercised on the CPU
def test_measure_orders_hooks_and_errors(interleave):
    from msrfnet.bench import timing as bench

    calls = []

    def builder(name, fail=False):
        spec = bench.PathSpec(name)

        def build():
            if fail:
                raise torch.cuda.OutOfMemoryError("simulated")
            return bench._Path(
                spec,
                lambda: calls.append(name) or torch.ones(2),
                bench._Runner(torch.nn.Identity(), spec),
                batch=4,
                first_output=lambda out: float(out.sum()),
            )

        return spec, build

    specs = [builder("a"), builder("oom", fail=True), builder("b")]
    hooked = []
    out = bench._measure(
        specs,
        warmup=2,
        steps=3,
        device=torch.device("cpu"),
        hook_spec=specs[2][0],
        hook=lambda call, dev: hooked.append(call()) or "hooked",
        interleave=interleave,
    )
    assert out["oom"] == {"error": "out of GPU memory"}
    assert calls == (
        ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b", "b"]
        if interleave
        else ["a"] * 5 + ["b"] * 6
    )
    assert out["b"]["hook"] == "hooked" and "hook" not in out["a"]
    for name in ("a", "b"):
        assert (
            out[name]["first"] == 2.0
            and out[name]["img_s"] > 0
            and out[name]["compile_status"] == "off"
        )


def test_baseline_out_of_memory_keeps_the_optimized_figures(monkeypatch):
    from msrfnet.bench import run as bench

    real = bench._training_path

    def training_path(model, spec, *args):
        if spec.name == "baseline":
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(model, spec, *args)

    monkeypatch.setattr(bench, "_training_path", training_path)
    r = run_bench(BenchOptions(device="cpu", image_size=16, batch_size=1, steps=1, compile=False))
    assert r["baseline_error"] == "out of GPU memory at batch 1"
    assert r["baseline_train_img_s"] is None and r["speedup_train"] is None
    assert r["train_img_s"] > 0 and r["infer_img_s"] > 0 and r["baseline_infer_img_s"] > 0


def test_bad_arguments_are_user_errors():
    with pytest.raises(MSRFError, match="multiple of 8"):
        run_bench(BenchOptions(device="cpu", image_size=30))
    with pytest.raises(MSRFError, match="compile mode"):
        run_bench(BenchOptions(device="cpu", image_size=16, compile_mode="fastest"))
    if not torch.cuda.is_available():
        with pytest.raises(MSRFError, match="no CUDA GPU"):
            run_bench(BenchOptions(device="cuda"))
    for bad in ({"batch_size": 0}, {"steps": 0}, {"infer_batch_size": 0}):
        with pytest.raises(MSRFError, match="at least 1"):
            BenchOptions(device="cpu", image_size=16, **bad)


def test_plan_fills_in_the_device_defaults():
    """The plan is made without measuring anything: the CPU's defaults, or what was asked."""
    plan = plan_bench(BenchOptions(device="cpu", image_size=16))
    assert (plan.batch, plan.infer_batch, plan.steps_train, plan.steps_infer) == (2, 1, 2, 3)
    assert plan.warmup == 1 and 1 <= plan.threads <= 2 and plan.compile_mode == "default"
    assert not plan.optimized_spec.compile  # not on the CPU unless compile_cpu
    assert plan.optimized_spec.cpu_inference_helper and plan.baseline_spec.amp_dtype is None
    asked = BenchOptions(
        device="cpu",
        image_size=16,
        batch_size=4,
        steps=5,
        warmup=0,
        threads=1,
        infer_batch_size=3,
        compile_cpu=True,
        compile_mode="max-autotune",
        channels_last=False,
    )
    plan = plan_bench(asked)
    assert (plan.batch, plan.infer_batch, plan.steps_train, plan.steps_infer) == (4, 3, 5, 5)
    assert plan.warmup == 0 and plan.threads == 1 and plan.options is asked
    assert plan.optimized_spec.compile and plan.optimized_spec.compile_mode == "max-autotune"
    assert not plan.optimized_spec.channels_last


def test_gpu_probe_runs_on_cpu_tiny():
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "gpu_bench_probe.py"),
            "--device",
            "cpu",
            "--tiny",
            "--threads",
            "1",
            "--profile-steps",
            "1",
            "--configs",
            "b2-compile-default,b2-eager,selftest-error",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) >= 3
    assert any("error" in row for row in rows)  # the deliberately failing configuration is reported
    ok = [row for row in rows if "error" not in row and row.get("kind") == "config"]
    assert ok and all(row["train_img_s"] > 0 for row in ok)
    assert any(row.get("kind") == "profile" for row in rows)
    assert time.perf_counter() - t0 < 300


@pytest.mark.slow
def test_full_size_cpu_bench():
    """The documented CPU figure: ``msrf bench --device cpu --json`` at 256² (2 threads)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "msrfnet.cli", "bench", "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    _check_result(r, 2, 256)
    assert r["infer_s_per_img"] < r["baseline_infer_s_per_img"]
    print(
        f"full-size CPU bench: {time.perf_counter() - t0:.0f} s; "
        f"{r['infer_s_per_img']:.3f} s/img vs {r['baseline_infer_s_per_img']:.3f}"
    )


def test_data_throughput_counts_whole_epochs(one_thread):
    from msrfnet.bench.data import data_throughput
    from msrfnet.data import sample_root

    r = data_throughput(sample_root(), image_size=32, batch_size=4, workers=0, epochs=2)
    n_train = len(list((sample_root() / "train" / "images").glob("*.png")))
    assert r["data_images"] == 2 * (n_train // 4) * 4  # drop_last, two timed epochs
    assert r["data_img_s"] == pytest.approx(r["data_images"] / r["data_seconds"])
    assert r["data_workers"] == 0 and r["data_augment"] is False


def test_cli_bench_with_data_reports_the_ratio(one_thread, capsys):
    from msrfnet.cli import main
    from msrfnet.data import sample_root

    rc = main(
        [
            "bench",
            "--device",
            "cpu",
            "--json",
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--no-compile",
            "--data",
            str(sample_root()),
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["data_img_s"] > 0 and r["data_batch_size"] == 2
    assert r["data_over_train"] == pytest.approx(r["data_img_s"] / r["train_img_s"])
    assert any(line.startswith("data pipeline:") for line in format_table(r))
