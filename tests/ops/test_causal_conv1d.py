"""vmbench.ops.causal_conv1d against a per-step loop written here, and its dispatch rules.

Semantics: Dao-AILab/causal-conv1d ``causal_conv1d_fn`` (commit 0d2252d): x (batch, dim, seqlen),
weight (dim, width); out[t] = bias + sum_k weight[k] * x[t - (width - 1) + k], zeros before the
start, then SiLU for activation "silu" / "swish".
"""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

from vmbench.errors import BackendUnavailableError
from vmbench.ops import available_conv_backends, causal_conv1d, causal_conv1d_ref, resolve_conv_backend

conv = importlib.import_module("vmbench.ops.causal_conv1d")


def loop_oracle(x, weight, bias, activation):
    """One output step at a time, one tap at a time, in fp64."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float64)
    for t in range(seqlen):
        acc = torch.zeros(batch, dim, dtype=torch.float64) if bias is None else bias.double().expand(batch, dim)
        for k in range(width):
            source = t - (width - 1) + k
            if source >= 0:
                acc = acc + weight[:, k].double() * x[:, :, source].double()
        out[:, :, t] = acc
    if activation in ("silu", "swish"):
        out = out / (1 + torch.exp(-out))
    return out


def make(batch=2, dim=3, seqlen=7, width=4, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, seqlen, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(dim, width, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(dim, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    return x, w, b


def grads(out, tensors, seed=1):
    """Gradients of a fixed random projection of ``out`` (not a plain sum: every output weighs differently)."""
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(tuple(out.shape), generator=g, dtype=torch.float64).to(out.device, out.dtype)
    live = [t for t in tensors if t is not None]
    return torch.autograd.grad((out * probe).sum(), live)


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    monkeypatch.setattr(conv, "_logged", set())
    monkeypatch.delenv(conv.CONV_ENV_VAR, raising=False)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize(
    "width, seqlen, with_bias", [(4, 9, True), (4, 2, True), (1, 5, False), (3, 6, False), (5, 8, True)]
)
def test_matches_the_loop_with_gradients(backend, activation, width, seqlen, with_bias):
    x, w, b = make(seqlen=seqlen, width=width, with_bias=with_bias)
    out = causal_conv1d(x, w, b, activation=activation, backend=backend)
    expected = loop_oracle(x, w, b, activation)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(out, (x, w, b)), grads(loop_oracle(x, w, b, activation), (x, w, b))):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_output_is_causal():
    x, w, b = make(seqlen=10)
    out = causal_conv1d(x, w, b, backend="torch")
    changed = x.detach().clone()
    changed[:, :, 6:] += 100.0  # the future of step 5
    out2 = causal_conv1d(changed, w, b, backend="torch")
    torch.testing.assert_close(out[:, :, :6], out2[:, :, :6])
    assert not torch.allclose(out[:, :, 6:], out2[:, :, 6:])


def test_fp32_and_dtype_follow_causal_conv1d_ref():
    x, w, b = make()
    out32 = causal_conv1d(x.float(), w.float(), b.float(), "silu", backend="torch")
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), loop_oracle(x, w, b, "silu"), rtol=1e-5, atol=1e-5)
    # Computed in the weight's dtype, returned in x's (causal_conv1d_ref's rule).
    out_bf16 = causal_conv1d(x.bfloat16(), w.float(), b.float(), None, backend="torch")
    assert out_bf16.dtype == torch.bfloat16
    assert causal_conv1d_ref(x.bfloat16(), w.float(), b.float()).dtype == torch.bfloat16


def test_bad_arguments_are_errors():
    x, w, b = make()
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d(x, w[:2], b)
    with pytest.raises(ValueError, match=r"x must be \(batch, dim, seqlen\)"):
        causal_conv1d(x[0], w, b)


# ----------------------------------------------------------------------------- dispatch


def test_cpu_default_is_torch_and_logged_once(caplog):
    x, w, b = make()
    with caplog.at_level(logging.INFO, logger="vmbench.ops"):
        causal_conv1d(x, w, b)
        causal_conv1d(x, w, b)
    messages = [r.getMessage() for r in caplog.records if r.name == "vmbench.ops"]
    assert len(messages) == 1 and "causal conv1d on cpu" in messages[0] and "'torch' backend" in messages[0]
    assert "automatic" in messages[0]
    assert available_conv_backends("cpu") == ["torch", "reference"]


def test_env_var_selects_and_argument_overrides(monkeypatch):
    monkeypatch.setenv(conv.CONV_ENV_VAR, "reference")
    assert resolve_conv_backend(None, "cpu") == "reference"
    assert resolve_conv_backend("torch", "cpu") == "torch"
    monkeypatch.setenv(conv.CONV_ENV_VAR, "auto")
    assert resolve_conv_backend(None, "cpu") == "torch"


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(BackendUnavailableError, match=r"causal-conv1d backend 'cuda' \(from argument\).*CUDA device"):
        resolve_conv_backend("cuda", "cpu")
    monkeypatch.setenv(conv.CONV_ENV_VAR, "cuda")
    x, w, b = make()
    with pytest.raises(BackendUnavailableError, match="VMBENCH_CONV_BACKEND") as err:
        causal_conv1d(x, w, b)
    assert "\n" not in str(err.value)
    with pytest.raises(BackendUnavailableError, match="unknown causal-conv1d backend 'fast'.*torch"):
        resolve_conv_backend("fast", "cpu")


def test_missing_kernel_names_the_extra(monkeypatch):
    fn, why = conv._cuda_kernel()
    if fn is not None:
        pytest.skip("causal-conv1d's kernel imports here")
    assert "causal" in why
    reason = conv._unavailable_reason("cuda", torch.device("cuda"), torch.float32, 4)
    assert "vmbench[cuda]" in reason and "'torch'" in reason


def test_automatic_choice_on_cuda(monkeypatch, caplog):
    cuda = torch.device("cuda")
    monkeypatch.setattr(conv, "_cuda_kernel", lambda: (object(), ""))
    assert resolve_conv_backend(None, cuda, torch.bfloat16, 4) == "cuda"
    # Inputs the kernel cannot take go to torch, with the reason in the log.
    with caplog.at_level(logging.INFO, logger="vmbench.ops"):
        assert resolve_conv_backend(None, cuda, torch.float64, 4) == "torch"
    assert any("fp64" in r.getMessage() or "float64" in r.getMessage() for r in caplog.records)
    assert resolve_conv_backend(None, cuda, torch.float32, 5) == "torch"
    with pytest.raises(BackendUnavailableError, match="widths 2 to 4"):
        resolve_conv_backend("cuda", cuda, torch.float32, 5)
    monkeypatch.setattr(conv, "_cuda_kernel", lambda: (None, "causal-conv1d's compiled kernel does not import (x)"))
    assert resolve_conv_backend(None, cuda, torch.float32, 4) == "torch"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("activation", [None, "silu"])
def test_cuda_kernel_matches_the_reference(activation):
    if conv._cuda_kernel()[0] is None:
        pytest.skip(conv._cuda_kernel()[1])
    x, w, b = make(batch=2, dim=16, seqlen=33, width=4)
    xc, wc, bc = (t.detach().float().cuda().requires_grad_() for t in (x, w, b))
    out = causal_conv1d(xc, wc, bc, activation, backend="cuda")
    torch.testing.assert_close(out.double().cpu(), loop_oracle(x, w, b, activation), rtol=1e-4, atol=1e-4)
    for got, want in zip(grads(out, (xc, wc, bc)), grads(loop_oracle(x, w, b, activation), (x, w, b))):
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-4)
