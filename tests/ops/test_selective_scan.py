"""The torch selective-scan backend against the plain fp64 reference, and the dispatch rules."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

import vmbench.ops.selective_scan_torch as scan_torch
from vmbench.ops import BackendUnavailableError, available_backends, resolve_backend, selective_scan
from vmbench.ops.selective_scan_ref import selective_scan_ref

# The package re-exports the function under the module's name; fetch the module itself.
dispatch = importlib.import_module("vmbench.ops.selective_scan")


def make_inputs(batch=2, groups=4, per_group=3, n_state=5, length=37, bc="grouped", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = groups * per_group

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    u = rnd(batch, dim, length)
    delta = rnd(batch, dim, length, scale=0.5)
    A = -(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 4 + 0.1).to(dtype)
    shapes = {"grouped": (batch, groups, n_state, length), "single": (batch, n_state, length), "constant": (dim, n_state)}
    B = rnd(*shapes[bc])
    C = rnd(*shapes[bc])
    D = rnd(dim)
    z = rnd(batch, dim, length)
    delta_bias = rnd(dim, scale=0.5)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)


def outputs_and_grads(inputs, backend, seed=1, **flags):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, backend=backend, **flags)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), list(leaves.values()))
    return out, dict(zip(leaves, grads))


FEATURES = [
    dict(use_D=True, use_z=True, use_bias=True, softplus=True),
    dict(use_D=False, use_z=False, use_bias=False, softplus=True),
    dict(use_D=True, use_z=False, use_bias=True, softplus=False),
    dict(use_D=False, use_z=True, use_bias=False, softplus=False),
]


@pytest.mark.parametrize("bc", ["grouped", "single", "constant"])
@pytest.mark.parametrize("features", FEATURES, ids=lambda f: "-".join(k for k, v in f.items() if v) or "plain")
@pytest.mark.parametrize("length", [1, 2, 37, 64])
def test_torch_equals_reference_fp64(bc, features, length):
    inputs = make_inputs(length=length, bc=bc)
    if not features["softplus"]:
        inputs["delta"] = inputs["delta"].abs()  # raw delta must be a positive step size
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    for key, flag in (("D", "use_D"), ("z", "use_z"), ("delta_bias", "use_bias")):
        if not features[flag]:
            del inputs[key]
    ref_out, ref_grads = outputs_and_grads(inputs, "reference", delta_softplus=features["softplus"])
    out, grads = outputs_and_grads(inputs, "torch", delta_softplus=features["softplus"])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("steps_per_chunk", [1, 3, 8])
def test_chunk_boundaries_do_not_change_the_result(monkeypatch, steps_per_chunk):
    inputs = make_inputs(length=23)
    ref_out, ref_grads = outputs_and_grads(inputs, "reference", delta_softplus=True)
    monkeypatch.setattr(scan_torch, "_chunk_length", lambda step, length: steps_per_chunk)
    out, grads = outputs_and_grads(inputs, "torch", delta_softplus=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_fp32_torch_close_to_fp64_reference_at_vmunet_like_values():
    # VM-UNet's regime: A = -(1..16), softplus(delta + dt-init bias), 4 direction groups.
    inputs = make_inputs(batch=1, groups=4, per_group=8, n_state=16, length=256)
    inputs["A"] = -torch.arange(1, 17, dtype=torch.float64).repeat(32, 1)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    out = selective_scan(**{k: v.float() for k, v in inputs.items()}, delta_softplus=True, backend="torch")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_gradcheck_fp64():
    inputs = make_inputs(batch=1, groups=2, per_group=2, n_state=3, length=6)
    names = list(inputs)

    def fn(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, backend="torch")

    leaves = [t.clone().requires_grad_() for t in inputs.values()]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_return_last_state_matches_reference():
    inputs = make_inputs(length=19)
    ref_out, ref_state = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    out, state = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend="torch")
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(state, ref_state)
    assert state.shape == (2, 12, 5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_compute_in_fp32_and_return_input_dtype(dtype):
    inputs = make_inputs(length=16, dtype=torch.float32)
    # Low-precision u/delta/B/C/z as mamba-ssm accepts them; A, D, delta_bias stay fp32.
    lowp = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    ref = selective_scan_ref(**{k: v.double() for k, v in lowp.items()}, delta_softplus=True)
    out = selective_scan(**lowp, delta_softplus=True, backend="torch")
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    leaves = {k: v.clone().requires_grad_() for k, v in lowp.items()}
    selective_scan(**leaves, delta_softplus=True, backend="torch").float().sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad.dtype == leaf.dtype, name


def test_backward_saves_no_full_state_tensor():
    # O(L) memory: the graph may hold the inputs and one state per chunk, never (batch, dim, L, N).
    inputs = make_inputs(batch=1, groups=4, per_group=4, n_state=16, length=256, dtype=torch.float32)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = selective_scan(**leaves, delta_softplus=True, backend="torch")
    full_state = 1 * 16 * 256 * 16
    assert saved and max(saved) < full_state
    # The chunk-start states are kept on the autograd context.
    n_chunk_elems = sum(t.numel() for t in out.grad_fn.chunk_starts)
    assert n_chunk_elems < full_state // 4


# ----------------------------------------------------------------------------- dispatch


@pytest.fixture
def fresh_dispatch(monkeypatch):
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    # Under TRITON_INTERPRET=1 the 'triton' backend is available on CPU (tests/ops/test_selective_scan_triton.py).
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return dispatch


def test_cpu_default_is_torch(fresh_dispatch):
    assert resolve_backend(None, "cpu") == "torch"
    assert available_backends("cpu") == ["torch", "reference"]


def test_env_var_selects_and_argument_overrides(fresh_dispatch, monkeypatch):
    monkeypatch.setenv(fresh_dispatch.ENV_VAR, "reference")
    assert resolve_backend(None, "cpu") == "reference"
    assert resolve_backend("torch", "cpu") == "torch"


def test_unavailable_backend_is_a_clear_error(fresh_dispatch, monkeypatch):
    with pytest.raises(BackendUnavailableError, match="'cuda'.*CUDA device"):
        resolve_backend("cuda", "cpu")
    monkeypatch.setenv(fresh_dispatch.ENV_VAR, "cuda")
    inputs = make_inputs(length=4)
    with pytest.raises(BackendUnavailableError, match=r"VMBENCH_SCAN_BACKEND"):
        selective_scan(**inputs)
    with pytest.raises(BackendUnavailableError, match="unknown selective-scan backend 'fast'"):
        resolve_backend("fast", "cpu")


def test_missing_cuda_kernel_reason_names_the_extra(fresh_dispatch):
    fn, why = fresh_dispatch._cuda_kernel()
    assert fn is None  # mamba-ssm cannot be installed on a CPU torch
    assert "selective_scan_cuda" in why or "mamba" in why


def test_choice_is_logged_once(fresh_dispatch, caplog):
    inputs = make_inputs(length=4)
    with caplog.at_level(logging.INFO, logger="vmbench.ops"):
        selective_scan(**inputs)
        selective_scan(**inputs)
    messages = [r.getMessage() for r in caplog.records if r.name == "vmbench.ops"]
    assert len(messages) == 1 and "'torch' backend" in messages[0] and "automatic" in messages[0]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x: x.update(u=x["u"][0]), "u must be"),
        (lambda x: x.update(delta=x["delta"][:, :, :3]), "delta shape"),
        (lambda x: x.update(A=x["A"][:5]), "A must be"),
        (lambda x: x.update(B=torch.zeros(2, 5, 5, 37, dtype=torch.float64)), "B must be"),
        (lambda x: x.update(C=x["C"][:, :, :, :10]), "C must be"),
        (lambda x: x.update(D=x["D"][:3]), "D must be"),
        (lambda x: x.update(z=x["z"][:1]), "z shape"),
    ],
)
def test_bad_shapes_name_the_argument(change, match):
    inputs = make_inputs()
    change(inputs)
    with pytest.raises(ValueError, match=match):
        selective_scan(**inputs, backend="torch")


def test_mamba_kernel_backward_follows_deterministic_mode():
    # mamba-ssm's backward adds dB/dC up with atomicAdd (selective_scan_bwd_kernel.cuh); its kernel
    # cannot run here, so a stand-in with the same signature (the reference scan) takes its place.
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    A, B, C = -torch.rand(4, 3, generator=g), torch.randn(1, 2, 3, 6, generator=g), torch.randn(1, 2, 3, 6, generator=g)
    u.requires_grad_()
    args = (u, delta, A, B, C, None, None, None, True)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        out, last = dispatch._mamba_scan(selective_scan_ref, *args, True)  # forward: deterministic, allowed
        assert torch.equal(out, selective_scan_ref(*args))
        with pytest.raises(RuntimeError, match=r"mamba-ssm.*atomic adds.*backend='torch'"):
            out.sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="mamba-ssm"):
            dispatch._mamba_scan(selective_scan_ref, *args, False).sum().backward()
        expected = torch.autograd.grad(selective_scan_ref(*args).sum(), u)[0]
        torch.testing.assert_close(u.grad, expected, rtol=0, atol=0)  # the wrapper passes gradients through
        torch.use_deterministic_algorithms(False)
        u.grad = None
        dispatch._mamba_scan(selective_scan_ref, *args, False).sum().backward()  # no alert when not asked
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
