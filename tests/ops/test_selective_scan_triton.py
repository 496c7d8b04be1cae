"""The Triton selective-scan backend against the fp64 reference, and its dispatch rules.

Without CUDA the kernels run on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1) at
tiny shapes; with CUDA (and TRITON_INTERPRET unset) the same tests run compiled on the GPU, plus the
``cuda``-marked tests at VM-UNet's shapes.
"""

from __future__ import annotations

import importlib
import logging
import os

import pytest
import torch

# Triton decorates its own library (tl.sum, ...) in interpreter or compiled mode once, when it is
# first imported, so TRITON_INTERPRET has to be set before anything imports triton. This module
# sets it (on machines without CUDA, unless the caller chose) just around that import and then
# restores the environment: other test files in the same session (automatic backend choice,
# `available_backends`, `vmbench bench`) must see the environment they were started with. The
# autouse fixture below sets it again for this module's tests only.
_ENV = "TRITON_INTERPRET"
_PREVIOUS = os.environ.get(_ENV)
INTERPRET = _PREVIOUS == "1" or (_PREVIOUS is None and not torch.cuda.is_available())
SKIP_REASON = None
if INTERPRET:
    os.environ[_ENV] = "1"
try:
    import triton  # noqa: F401

    scan_triton = importlib.import_module("vmbench.ops.selective_scan_triton")
except ImportError as err:
    scan_triton = None
    SKIP_REASON = f"the Triton backend cannot be tested here: {err}"
finally:
    if _PREVIOUS is None:
        os.environ.pop(_ENV, None)
    else:
        os.environ[_ENV] = _PREVIOUS

from vmbench.ops import BackendUnavailableError, available_backends, resolve_backend, selective_scan  # noqa: E402
from vmbench.ops.selective_scan_ref import selective_scan_ref  # noqa: E402

dispatch = importlib.import_module("vmbench.ops.selective_scan")
DEVICE = "cpu" if INTERPRET else "cuda"
if SKIP_REASON is None and not INTERPRET and not torch.cuda.is_available():
    SKIP_REASON = f"{_ENV}={_PREVIOUS} and no CUDA device: nothing can run the Triton kernels"
needs_triton = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
pytestmark = needs_triton


@pytest.fixture(autouse=True)
def _triton_mode(monkeypatch):
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    if INTERPRET:
        monkeypatch.setenv(_ENV, "1")
    else:
        monkeypatch.delenv(_ENV, raising=False)


@pytest.fixture
def chunk(monkeypatch):
    """Set the kernels' tile sizes (small chunks put several chunk boundaries into short sequences)."""

    def set_config(**values):
        monkeypatch.setenv(scan_triton.CONFIG_ENV_VAR, ",".join(f"{k}={v}" for k, v in values.items()))

    return set_config


# ----------------------------------------------------------------------------- helpers


def make_inputs(batch=2, groups=2, per_group=4, n_state=5, length=33, bc="grouped", seed=0, c_layout=None):
    """fp64 inputs (the oracle's precision); tests cast to the kernels' dtype."""
    g = torch.Generator().manual_seed(seed)
    dim = groups * per_group

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    shapes = {
        "grouped": (batch, groups, n_state, length),
        "single": (batch, n_state, length),
        "constant": (dim, n_state),
    }
    return dict(
        u=rnd(batch, dim, length),
        delta=rnd(batch, dim, length, scale=0.5),
        A=-(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 4 + 0.1),
        B=rnd(*shapes[bc]),
        C=rnd(*shapes[c_layout or bc]),
        D=rnd(dim),
        z=rnd(batch, dim, length),
        delta_bias=rnd(dim, scale=0.5),
    )


def run(inputs, backend, dtype=None, device="cpu", seed=1, **flags):
    """Output, last state (if asked) and the gradients of every input for a fixed random cotangent."""
    leaves = {
        k: (v.to(dtype) if dtype is not None and k in ("u", "delta", "B", "C", "z") else v).to(device)
        for k, v in inputs.items()
    }
    leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    result = selective_scan(**leaves, backend=backend, **flags)
    out, last = result if isinstance(result, tuple) else (result, None)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * weight.to(device)).sum(), list(leaves.values()))
    return out, last, dict(zip(leaves, grads))


def assert_matches(got, ref, tol, name):
    """Elementwise within ``tol`` relative, plus ``tol`` of the tensor's largest value (entries that
    are sums of terms of both signs can be near zero)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().item()
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(scale, 1e-30), msg=lambda m: f"{name}: {m}")


def check_against_reference(inputs, tol=1e-5, dtype=torch.float32, device=None, **flags):
    device = device or DEVICE
    if dtype is torch.float32:
        ref_inputs = inputs
    else:  # the oracle sees the same rounded values the kernels get
        ref_inputs = {k: (v.to(dtype).double() if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    ref_out, ref_last, ref_grads = run(ref_inputs, "reference", **flags)
    fp32 = {k: v.float() for k, v in inputs.items()}
    out, last, grads = run(fp32, "triton", dtype=None if dtype is torch.float32 else dtype, device=device, **flags)
    assert out.dtype == (torch.float32 if dtype is torch.float32 else dtype)
    assert out.device.type == torch.device(device).type
    assert_matches(out, ref_out, tol, "out")
    if flags.get("return_last_state"):
        assert last.dtype == torch.float32 and last.shape == ref_last.shape
        assert_matches(last, ref_last, tol, "last state")
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        low_precision = dtype is not torch.float32 and name in ("u", "delta", "B", "C", "z")
        expected_dtype = dtype if low_precision else torch.float32
        assert grad.dtype == expected_dtype, name
        assert grad.shape == inputs[name].shape, name
        assert_matches(grad, ref_grads[name], tol, f"gradient of {name}")


FEATURES = [
    dict(use_D=True, use_z=True, use_bias=True, softplus=True),
    dict(use_D=False, use_z=False, use_bias=False, softplus=True),
    dict(use_D=True, use_z=False, use_bias=True, softplus=False),
    dict(use_D=False, use_z=True, use_bias=False, softplus=False),
]


def with_features(inputs, features):
    inputs = dict(inputs)
    if not features["softplus"]:
        inputs["delta"] = inputs["delta"].abs()  # a raw delta must be a positive step size
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    for key, flag in (("D", "use_D"), ("z", "use_z"), ("delta_bias", "use_bias")):
        if not features[flag]:
            del inputs[key]
    return inputs, dict(delta_softplus=features["softplus"])


# ----------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("bc", ["grouped", "single", "constant"])
@pytest.mark.parametrize("features", FEATURES, ids=lambda f: "-".join(k for k, v in f.items() if v) or "plain")
def test_matches_reference_all_layouts_and_features(chunk, bc, features):
    chunk(block_t=16)  # L = 33: three chunks, the last one partial
    inputs, flags = with_features(make_inputs(length=33, bc=bc), features)
    check_against_reference(inputs, **flags)


@pytest.mark.parametrize("length", [1, 7, 33, 100])
def test_lengths_including_odd_and_not_powers_of_two(chunk, length):
    chunk(block_t=16)
    check_against_reference(make_inputs(length=length), delta_softplus=True)


@pytest.mark.parametrize("block_t, length", [(1, 9), (4, 37), (64, 37)])
def test_chunk_size_does_not_change_the_result(chunk, block_t, length):
    chunk(block_t=block_t)  # one step per chunk; 10 chunks; one chunk with padding
    check_against_reference(make_inputs(length=length, batch=1), delta_softplus=True, return_last_state=True)


@pytest.mark.parametrize("fwd_block_d, bwd_block_d", [(1, 8), (8, 2)])
def test_channels_per_program(chunk, fwd_block_d, bwd_block_d):
    # 8 channels per group: programs of 1, 2 or 8 channels; each dB/dC address gets 8, 4 or 1 atomic
    # adds. Forward and backward tile the channels independently.
    chunk(block_t=8, fwd_block_d=fwd_block_d, bwd_block_d=bwd_block_d)
    check_against_reference(make_inputs(batch=1, groups=2, per_group=8, length=12), delta_softplus=True)


def test_odd_group_size_and_vmunet_state_size(chunk):
    # 3 channels per group forces one channel per program; N = 16 as in VM-UNet (no state padding).
    chunk(block_t=8)
    check_against_reference(make_inputs(batch=1, groups=2, per_group=3, n_state=16, length=13), delta_softplus=True)


@pytest.mark.parametrize("b_layout, c_layout", [("grouped", "constant"), ("single", "grouped"), ("constant", "single")])
def test_b_and_c_in_different_layouts(chunk, b_layout, c_layout):
    chunk(block_t=8)
    check_against_reference(make_inputs(length=19, bc=b_layout, c_layout=c_layout), delta_softplus=True)


def test_return_last_state(chunk):
    chunk(block_t=8)
    inputs = make_inputs(length=29)
    check_against_reference(inputs, delta_softplus=True, return_last_state=True)
    with torch.no_grad():  # the no-checkpoint path returns the same state
        fp32 = {k: v.float().to(DEVICE) for k, v in inputs.items()}
        out, last = selective_scan(**fp32, delta_softplus=True, return_last_state=True, backend="triton")
        ref_out, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert_matches(out, ref_out, 1e-5, "out")
    assert_matches(last, ref_last, 1e-5, "last state")


def test_vmunet_regime_fp32(chunk):
    # VM-UNet's values: A = -(1..16), dt from its dt init through softplus(delta + bias), 4 groups.
    chunk(block_t=32)
    inputs = make_inputs(batch=1, groups=4, per_group=4, n_state=16, length=96)
    inputs["A"] = -torch.arange(1, 17, dtype=torch.float64).repeat(16, 1)
    dt = torch.exp(torch.rand(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 4.6 - 6.9)
    inputs["delta_bias"] = dt + torch.log(-torch.expm1(-dt))
    del inputs["z"]
    check_against_reference(inputs, delta_softplus=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(chunk, dtype):
    # bf16/fp16 u, delta, B, C, z with fp32 state: output and their gradients in the input dtype.
    # Against the fp64 oracle on the same rounded inputs, the remaining error is the final rounding.
    chunk(block_t=8)
    check_against_reference(make_inputs(length=24), tol=1e-2, dtype=dtype, delta_softplus=True)


def test_softplus_threshold_and_extremes(chunk):
    # delta + bias above 20 (identity branch) and far below 0 (log1p precision) in one call.
    chunk(block_t=8)
    inputs = make_inputs(length=16)
    inputs["delta"][0, :3] = 25.0
    inputs["delta"][1, :3] = -30.0
    inputs["A"] = inputs["A"] * 0.01  # keep exp(dt*A) away from underflow at dt = 25
    check_against_reference(inputs, delta_softplus=True)


def test_non_contiguous_inputs(chunk):
    # VM-UNet passes B and C as views of one projection (torch.split), and u may arrive transposed.
    chunk(block_t=8)
    inputs = make_inputs(length=18)
    batch, groups, n_state, length = inputs["B"].shape
    both = torch.cat([inputs["B"], inputs["C"]], dim=2)
    inputs["B"], inputs["C"] = torch.split(both, [n_state, n_state], dim=2)
    assert not inputs["B"].is_contiguous()
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    ref_out, _, ref_grads = run(inputs, "reference", delta_softplus=True)
    fp32 = {k: v.float() for k, v in inputs.items()}
    fp32["B"], fp32["C"] = torch.split(both.float(), [n_state, n_state], dim=2)
    out, _, grads = run(fp32, "triton", device=DEVICE, delta_softplus=True)
    assert_matches(out, ref_out, 1e-5, "out")
    for name in grads:
        assert_matches(grads[name], ref_grads[name], 1e-5, f"gradient of {name}")


def test_inference_skips_checkpoints_and_training_keeps_one_state_per_chunk(chunk):
    chunk(block_t=16)
    inputs = make_inputs(batch=1, groups=4, per_group=4, n_state=16, length=96)
    inputs = {k: v.float().to(DEVICE) for k, v in inputs.items()}
    with torch.no_grad():
        plain = selective_scan(**inputs, delta_softplus=True, backend="triton")
    assert plain.grad_fn is None
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = selective_scan(**leaves, delta_softplus=True, backend="triton")
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    full_states = 1 * 16 * 96 * 16  # (batch, dim, L, N)
    checkpoints = 1 * 16 * (96 // 16) * 16  # one state per chunk
    assert checkpoints in saved
    assert max(saved) <= 4 * 16 * 96 < full_states  # the largest saved tensor is an input (B or C)


def test_gradients_only_for_some_inputs(chunk):
    chunk(block_t=8)
    inputs = {k: v.float().to(DEVICE) for k, v in make_inputs(length=12).items()}
    u = inputs.pop("u").requires_grad_()
    out = selective_scan(u, **inputs, delta_softplus=True, backend="triton")
    (du,) = torch.autograd.grad(out.sum(), [u])
    ref_u = make_inputs(length=12)["u"].requires_grad_()
    ref_rest = {k: v for k, v in make_inputs(length=12).items() if k != "u"}
    (ref_du,) = torch.autograd.grad(selective_scan_ref(ref_u, **ref_rest, delta_softplus=True).sum(), [ref_u])
    assert_matches(du, ref_du, 1e-5, "du")


_AOT_SCRIPT = """
import torch
from vmbench.ops.selective_scan_triton import ScanConfig
from vmbench.ops.selective_scan_triton_aot import compile_for_target, sass_profile
variants = [
    dict(),  # VM-UNet stage 1: fp32, grouped B/C, D, delta_bias, softplus
    dict(dtype=torch.bfloat16),
    dict(dtype=torch.bfloat16, has_z=True, b_const=True, n_state=5, length=33, channel_divisor=3),
    dict(dtype=torch.float16, c_const=True, has_d=False, has_bias=False, softplus=False, length=7),
    dict(config=ScanConfig(dot_sums=1)),  # the channel sums as a tl.dot
]
for i, kw in enumerate(variants):
    built = compile_for_target(**kw)
    assert built["launch"].dot_sums == ("config" in kw), kw
    for name in ("fwd", "bwd"):
        assert len(built[name].asm["cubin"]) > 0, (kw, name)
        if i < 2:  # the default tiles at VM-UNet's stage-1 call
            p = sass_profile(built, name)
            print(name, kw.get("dtype", torch.float32), p.registers, p.spill_bytes, round(p.instructions_per_element, 1),
                  round(p.shuffles_per_element, 2), round(p.special_functions_per_element, 2))
print("compiled", 2 * len(variants))
"""


def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    # The interpreter does not run Triton's compiler; this lowers both kernels to sm_90 cubins with
    # the ptxas bundled in the triton wheel, in a separate process (compiled mode), and reads the
    # default tiles' machine code at VM-UNet's stage-1 call.
    import subprocess
    import sys

    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")):
        pytest.skip("this triton wheel ships no ptxas/cuobjdump")
    env = {k: v for k, v in os.environ.items() if k != _ENV}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled 10" in done.stdout
    profiles = [line.split() for line in done.stdout.splitlines() if line.startswith(("fwd", "bwd"))]
    assert len(profiles) == 4
    for name, dtype, registers, spill_bytes, per_element, shuffles, exps in profiles:
        where = f"{name} {dtype}: {done.stdout}"
        assert int(spill_bytes) == 0, f"register spills at the default tiles, {where}"
        if dtype != "torch.float32":
            continue  # (Triton 3.6 converts bf16 tiles less directly; VM-UNet's scans run in fp32)
        # One exp2 per element (plus the per-row softplus, shared by the block's states): the
        # backward takes a_{t+1} from the recomputed decays instead of a second exp.
        assert float(exps) < 1.5, where
        # The recurrences run in registers: a reverse tl.associative_scan alone added ~20 shuffles
        # per element to the backward (Triton 3.6); what remains are the sums over lanes.
        assert float(shuffles) < (2 if name == "fwd" else 12), where


# ----------------------------------------------------------------------------- dispatch


def test_triton_backend_runs_on_cpu_under_the_interpreter():
    if not INTERPRET:
        pytest.skip("CUDA machine: the kernels run compiled, not interpreted")
    assert "triton" in available_backends("cpu")
    inputs = {k: v.float() for k, v in make_inputs(length=9).items()}
    out = selective_scan(**inputs, delta_softplus=True, backend="triton")
    ref = selective_scan(**inputs, delta_softplus=True, backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_automatic_choice_on_cpu_stays_torch_even_under_the_interpreter(caplog):
    inputs = {k: v.float() for k, v in make_inputs(length=5).items()}
    with caplog.at_level(logging.INFO, logger="vmbench.ops"):
        selective_scan(**inputs)
    assert resolve_backend(None, "cpu") == "torch"
    assert any("'torch' backend" in r.getMessage() and "automatic" in r.getMessage() for r in caplog.records)


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(_ENV, raising=False)
    assert "triton" not in available_backends("cpu")
    with pytest.raises(BackendUnavailableError, match=r"'triton'.*CUDA device.*TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")
    with pytest.raises(BackendUnavailableError, match="'triton'"):
        selective_scan(**{k: v.float() for k, v in make_inputs(length=4).items()}, backend="triton")


def test_fp64_is_refused_explicitly_and_routed_to_torch_automatically(monkeypatch):
    inputs = make_inputs(length=4)
    with pytest.raises(BackendUnavailableError, match="fp64"):
        selective_scan(**{k: v.to(DEVICE) for k, v in inputs.items()}, backend="triton")
    # Automatic choice on CUDA without mamba-ssm would be Triton; fp64 goes to torch instead.
    monkeypatch.setattr(dispatch, "_automatic", lambda device: ("triton", "automatic"))
    assert resolve_backend(None, "cuda", torch.float64) == "torch"
    assert resolve_backend(None, "cuda", torch.float32) == "triton"


def test_automatic_choice_on_cuda_prefers_mamba_then_triton_then_torch(monkeypatch, caplog):
    cuda = torch.device("cuda")
    reasons = {"cuda": "no selective_scan_cuda", "triton": None}
    monkeypatch.setattr(dispatch, "_unavailable_reason", lambda name, device: reasons.get(name))
    monkeypatch.setattr(dispatch, "_cuda_kernel", lambda: (None, "mamba-ssm's compiled kernel does not import (x)"))
    with caplog.at_level(logging.INFO, logger="vmbench.ops"):
        assert resolve_backend(None, cuda) == "triton"
    assert any("'triton' backend" in r.getMessage() and "does not import" in r.getMessage() for r in caplog.records)
    reasons["triton"] = "triton does not import (ModuleNotFoundError); install triton"
    assert dispatch._automatic(cuda)[0] == "torch"
    assert "install triton" in dispatch._automatic(cuda)[1]
    reasons["cuda"] = None
    assert dispatch._automatic(cuda)[0] == "cuda"


def test_bad_config_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(scan_triton.CONFIG_ENV_VAR, "block_t=lots")
    with pytest.raises(ValueError, match="VMBENCH_TRITON_SCAN_CONFIG"):
        scan_triton.scan_config(8, 16, 4, 8)


def test_tile_sizes_respect_groups_and_length():
    cfg = scan_triton.ScanConfig(block_t=16, fwd_block_d=16, bwd_block_d=8, max_tile=4096)
    launch = scan_triton.scan_config(768, 4096, 16, 192, cfg)  # VM-UNet stage 1: 192 channels per group
    assert (launch.fwd_block_d, launch.bwd_block_d, launch.block_n) == (16, 8, 16)
    assert (launch.block_t, launch.n_chunks) == (16, 256)
    assert scan_triton.scan_config(12, 7, 5, 3, cfg).fwd_block_d == 1  # 3 channels per group
    launch = scan_triton.scan_config(16, 7, 5, 8, cfg)
    assert (launch.block_n, launch.block_t, launch.n_chunks) == (8, 8, 1)  # N padded, T capped near L
    assert scan_triton.scan_config(64, 100, 64, 64, cfg).fwd_block_d == 4  # large N: fewer channels


def test_tune_checks_and_times_each_candidate(monkeypatch):
    # `vmbench bench tune` for real (interpreter on CPU, compiled on CUDA), at one tiny shape: every
    # candidate is checked against the torch backend and timed; the recommendation is the fastest.
    from vmbench import bench

    monkeypatch.setenv(scan_triton.CONFIG_ENV_VAR, "block_t=2")  # the caller's setting comes back afterwards
    lines = []
    summary = bench.bench_tune(
        ["dot_sums=1", " "], shapes=((32, 40),), device=DEVICE, repeats=1, isolate=False, printer=lines.append
    )
    assert os.environ[scan_triton.CONFIG_ENV_VAR] == "block_t=2"
    configs = [e["config"] for e in summary["candidates"]]
    assert configs == ["", "dot_sums=1"]  # the defaults always run, first; blanks dropped
    for entry in summary["candidates"]:
        assert entry["correct"] and entry["max_rel_err"] < 1e-5
        assert entry["rows"][0]["shape"] == (32, 40)
    fastest = min(summary["candidates"], key=lambda e: e["fwd_bwd_s"])["config"]
    assert summary["best_fwd_bwd"] == fastest
    assert any(line.startswith("fastest for training") for line in lines)


def _fake_tune(results):
    """run_tune_case stand-in: made-up (fwd_s, fwd_bwd_s, error) per config, or an exception."""

    def run(case):
        outcome = results[case.config]
        if isinstance(outcome, Exception):
            raise outcome
        fwd, fwd_bwd, error = outcome
        row = dict(impl="triton", shape=case.shapes[0], batch=case.batch, fwd_s=fwd, fwd_bwd_s=fwd_bwd,
                   fwd_peak_bytes=0, fwd_bwd_peak_bytes=0, max_rel_err=error)  # fmt: skip
        return {"config": case.config, "rows": [row]}

    return run


def test_tune_excludes_wrong_and_failing_candidates(monkeypatch):
    from vmbench.bench import tune as bench

    monkeypatch.setattr(bench, "run_tune_case", _fake_tune({
        "": (1e-3, 4e-3, 1e-7),
        "block_t=16": (0.1e-3, 0.5e-3, 0.3),  # fastest but wrong: never recommended
        "bwd_warps=8": RuntimeError("out of resources"),
        "bwd_block_d=8": (2e-3, 2e-3, 1e-7),  # twice the defaults' training speed, slower forward
    }))  # fmt: skip
    lines = []
    summary = bench.bench_tune(
        ["block_t=16", "bwd_warps=8", "bwd_block_d=8"], shapes=((768, 4096),), device="cuda", isolate=False,
        printer=lines.append,
    )  # fmt: skip
    assert summary["failed"] == ["bwd_warps=8"]
    assert summary["best_fwd_bwd"] == "bwd_block_d=8" and summary["best_fwd"] == ""
    text = "\n".join(lines)
    assert "WRONG: excluded" in text and "failed: RuntimeError: out of resources" in text
    assert f"{scan_triton.CONFIG_ENV_VAR}='bwd_block_d=8', 2.00x the defaults' speed" in text
    assert "fastest for inference (fwd): the defaults" in text

    monkeypatch.setattr(bench, "run_tune_case", _fake_tune({"": (1e-3, 4e-3, 0.5), "block_t=16": (1e-3, 4e-3, 0.5)}))
    with pytest.raises(RuntimeError, match="no Triton tile configuration both ran and matched"):
        bench.bench_tune(["block_t=16"], shapes=((768, 4096),), device="cuda", isolate=False, printer=lines.append)


def test_tune_refuses_a_malformed_candidate_before_timing_anything(monkeypatch):
    from vmbench.bench import tune as bench

    monkeypatch.setattr(bench, "run_tune_case", _fake_tune({}))  # KeyError if anything ran
    with pytest.raises(ValueError, match="VMBENCH_TRITON_SCAN_CONFIG='warps=4'"):
        bench.bench_tune(["dot_sums=1", "warps=4"], device=DEVICE, isolate=False, printer=lambda line: None)


def test_cuda_scan_table_arithmetic_with_synthetic_timings(monkeypatch):
    # Exercises the CUDA branch of `vmbench bench scan` on CPU with made-up timings (no GPU figure):
    # bytes per pass (forward (3*BKDL + 2*BKNL)*4: u, delta, B, C in, y out; backward
    # (5*BKDL + 4*BKNL)*4 with dy, du, ddelta, dB, dC), GB/s, % of peak and multiple of the floor.
    from vmbench.bench import scan as bench

    fwd_bytes, bwd_bytes = bench.scan_bytes(768, 4096, 32)
    assert (round(fwd_bytes / 1e9, 2), round(bwd_bytes / 1e9, 2)) == (1.28, 2.15)  # stage 1, B = 32

    def fake_case(case):
        return dict(impl=case.impl, shape=(case.channels, case.length), batch=case.batch, fwd_s=1e-3,
                    fwd_bwd_s=4e-3, fwd_peak_bytes=0, fwd_bwd_peak_bytes=2**20)  # fmt: skip

    monkeypatch.setattr(bench, "run_scan_case", fake_case)
    monkeypatch.setattr(bench, "mambapy_available", lambda: False)
    lines = []
    rows = bench.bench_scan(
        ["triton"], ((768, 4096),), batch=32, device="cuda", isolate=False, peak_gbps=3000.0, printer=lines.append
    )
    (row,) = rows
    assert abs(row["fwd_gbps"] - fwd_bytes / 1e-3 / 1e9) < 1e-6
    assert abs(row["fwd_x_floor"] - 3000.0 / row["fwd_gbps"]) < 1e-9  # = time / (bytes / peak)
    assert abs(row["fwd_bwd_gbps"] - (fwd_bytes + bwd_bytes) / 4e-3 / 1e9) < 1e-6
    assert any("mambapy is not installed" in line for line in lines)
    assert any("peak 3000 GB/s (--peak-gbps)" in line for line in lines)
    assert lines[-1].split()[2:5] == ["triton", "1.000", "4.000"]


# ----------------------------------------------------------------------------- CUDA, VM-UNet shapes

VMUNET_SHAPES = [(768, 4096), (1536, 1024), (3072, 256), (6144, 64)]  # (K*D, L) at 256x256
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA device (and TRITON_INTERPRET unset)"
)


def vmunet_inputs(channels, length, batch=1, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    n_state, groups = 16, 4
    dt = torch.exp(torch.rand(channels, generator=g, dtype=torch.float64) * 4.6 - 6.9)  # VM-UNet dt init
    inputs = dict(
        u=torch.randn(batch, channels, length, generator=g, dtype=torch.float64),
        delta=torch.randn(batch, channels, length, generator=g, dtype=torch.float64) * 0.5,
        A=-torch.arange(1, n_state + 1, dtype=torch.float64).repeat(channels, 1),
        B=torch.randn(batch, groups, n_state, length, generator=g, dtype=torch.float64),
        C=torch.randn(batch, groups, n_state, length, generator=g, dtype=torch.float64),
        D=torch.ones(channels, dtype=torch.float64),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )
    return {k: v.to(device) for k, v in inputs.items()}


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("channels, length", VMUNET_SHAPES, ids=lambda v: str(v))
def test_cuda_vmunet_shapes_match_fp64(channels, length):
    # Oracle: the torch backend in fp64 on the GPU (equal to the reference to 1e-9, see
    # test_selective_scan.py); the plain reference is used as well where its loop is short.
    inputs = vmunet_inputs(channels, length)
    oracle = "reference" if length <= 256 else "torch"
    ref_out, _, ref_grads = run(inputs, oracle, device="cuda", delta_softplus=True)
    out, _, grads = run({k: v.float() for k, v in inputs.items()}, "triton", device="cuda", delta_softplus=True)
    assert out.dtype == torch.float32
    # On the GPU exp2 is the hardware approximation (ex2.approx, within 2 ulp, as mamba-ssm's
    # exp2f with fast math): its errors compound along up to 4096-step decay products, hence a
    # looser tolerance than the interpreter tests
    tol = 1e-5 if length <= 256 else 1e-4
    assert_matches(out, ref_out, tol, "out")
    for name in grads:
        assert_matches(grads[name], ref_grads[name], 5 * tol if name == "A" else tol, f"gradient of {name}")


@pytest.mark.cuda
@needs_cuda
def test_cuda_channel_sums_as_a_dot_match_fp64(chunk):
    chunk(dot_sums=1)  # the option the GPU check times against the default
    inputs = vmunet_inputs(1536, 1024)
    ref_out, _, ref_grads = run(inputs, "torch", device="cuda", delta_softplus=True)
    out, _, grads = run({k: v.float() for k, v in inputs.items()}, "triton", device="cuda", delta_softplus=True)
    assert_matches(out, ref_out, 1e-4, "out")
    for name in grads:
        assert_matches(grads[name], ref_grads[name], 5e-4 if name == "A" else 1e-4, f"gradient of {name}")


@pytest.mark.cuda
@needs_cuda
def test_cuda_vmunet_stage1_bf16_and_automatic_choice():
    inputs = vmunet_inputs(768, 4096)
    rounded = {k: (v.to(torch.bfloat16).double() if k in ("u", "delta", "B", "C") else v) for k, v in inputs.items()}
    ref_out, _, ref_grads = run(rounded, "torch", device="cuda", delta_softplus=True)
    out, _, grads = run(
        {k: v.float() for k, v in inputs.items()}, "triton", dtype=torch.bfloat16, device="cuda", delta_softplus=True
    )
    assert out.dtype == torch.bfloat16
    assert_matches(out, ref_out, 1e-2, "out")
    for name in grads:
        assert_matches(grads[name], ref_grads[name], 2e-2, f"gradient of {name}")
    if dispatch._cuda_kernel()[0] is None:
        assert resolve_backend(None, "cuda", torch.float32) == "triton"


def test_memory_estimate_stand_in_saves_what_the_triton_backend_saves(chunk):
    # benchmarks/vmunet_memory.py counts VM-UNet's saved activations with a stand-in for the scan;
    # its figure is only right while the stand-in keeps what SelectiveScanTriton keeps.
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "vmunet_memory.py")
    spec = importlib.util.spec_from_file_location("vmunet_memory", path)
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    chunk(block_t=8)
    inputs = {k: v.float().to(DEVICE).requires_grad_() for k, v in make_inputs(length=21).items() if k != "z"}

    def saved_by(call):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append((tuple(t.shape), t.dtype)) or t, lambda t: t):
            call()
        return sorted(shapes, key=str)

    real = saved_by(lambda: selective_scan(**inputs, delta_softplus=True, backend="triton"))
    stand_in = saved_by(
        lambda: memory._TritonScanStandIn.apply(
            *(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")), 8
        )
    )
    assert real == stand_in
    assert ((2, 8, 3, 5), torch.float32) in real  # the checkpoints: ceil(21 / 8) chunks


def test_deterministic_mode_is_refused_by_the_backward_with_the_fix(chunk):
    # Atomic adds make some gradients vary in their last bits; PyTorch's own such kernels raise
    # (or warn) under torch.use_deterministic_algorithms, and so does this backend.
    chunk(block_t=8)
    inputs = {k: v.float().to(DEVICE).requires_grad_() for k, v in make_inputs(length=9).items()}
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        out = selective_scan(**inputs, delta_softplus=True, backend="triton")  # the forward is deterministic
        with pytest.raises(RuntimeError, match=r"atomic adds.*backend='torch'"):
            out.sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        out = selective_scan(**inputs, delta_softplus=True, backend="triton")
        with pytest.warns(UserWarning, match="atomic adds"):
            out.sum().backward()
        assert inputs["B"].grad is not None
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _triton_before(major: int, minor: int) -> bool:
    import triton

    return tuple(int(p) for p in triton.__version__.split(".")[:2]) < (major, minor)


@pytest.mark.skipif(
    SKIP_REASON is None and INTERPRET and _triton_before(3, 9),
    reason="Triton 3.6's interpreter misplaces atomic_add values taken from tl.split's strided views (3.9's does not)",
)
@pytest.mark.parametrize("bc", ["grouped", "single"])
def test_channel_sums_as_a_dot_match_the_reference(chunk, bc):
    # dot_sums=1: the backward's dB/dC sums over a program's channels run as a batched tl.dot
    # (needs 16 states and 16 channels per program, so VM-UNet-like sizes here).
    chunk(block_t=8, bwd_block_d=16, dot_sums=1)
    assert scan_triton.scan_config(32, 21, 16, 16).dot_sums
    check_against_reference(make_inputs(batch=2, groups=2, per_group=16, n_state=16, length=21, bc=bc), delta_softplus=True)
