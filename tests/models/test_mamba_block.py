"""vmbench.models.mamba.Mamba against a plain fp64 reference written here, its parameters and init.

The reference follows the unfused path of state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py``
(commit e9594ce1) with nothing of vmbench's: in_proj, causal depthwise conv + SiLU, x_proj split
into (dt, B, C), dt_proj, a step-by-step selective-scan loop (softplus(dt + bias), exp(dt * A)),
D skip, gate SiLU(z), out_proj.
"""

from __future__ import annotations

import importlib
import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vmbench.environment import temporary_env
from vmbench.errors import BackendUnavailableError
from vmbench.models.mamba import Mamba

scan_dispatch = importlib.import_module("vmbench.ops.selective_scan")
conv_dispatch = importlib.import_module("vmbench.ops.causal_conv1d")


def reference_forward(m: Mamba, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """mamba_simple.Mamba's slow path with parameters ``p`` (fp64), one time step at a time."""
    batch, seqlen, _ = h.shape
    xz = h @ p["in_proj.weight"].t()  # (batch, seqlen, 2 * d_inner)
    if "in_proj.bias" in p:
        xz = xz + p["in_proj.bias"]
    x, z = xz[..., : m.d_inner], xz[..., m.d_inner :]
    w = p["conv1d.weight"][:, 0, :]  # (d_inner, d_conv)
    steps = []
    for t in range(seqlen):
        taps = [w[:, k] * x[:, t - (m.d_conv - 1) + k] for k in range(m.d_conv) if t - (m.d_conv - 1) + k >= 0]
        steps.append(p.get("conv1d.bias", 0.0) + sum(taps))
    conv = torch.stack(steps, dim=1)
    x = conv * torch.sigmoid(conv)
    x_dbl = x @ p["x_proj.weight"].t()
    dt_raw, B, C = x_dbl.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = F.softplus(dt_raw @ p["dt_proj.weight"].t() + p["dt_proj.bias"])  # (batch, seqlen, d_inner)
    A = -torch.exp(p["A_log"])  # (d_inner, d_state)
    state = torch.zeros(batch, m.d_inner, m.d_state, dtype=torch.float64)
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dt[:, t, :, None] * A)
        state = decay * state + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((state * C[:, t, None, :]).sum(-1) + p["D"] * x[:, t])
    y = torch.stack(ys, dim=1) * (z * torch.sigmoid(z))
    out = y @ p["out_proj.weight"].t()
    return out + p["out_proj.bias"] if "out_proj.bias" in p else out


def perturb_(m: Mamba, seed: int = 0) -> Mamba:
    """Move every parameter off its initial value (D = 1 and the dt init would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def check_against_reference(m: Mamba, h: torch.Tensor, tol: float) -> None:
    """Output and the gradient of every input and parameter, against the reference in fp64."""
    g = torch.Generator().manual_seed(5)
    h = h.detach().requires_grad_()
    out = m(h)
    probe = torch.randn(tuple(out.shape), generator=g, dtype=torch.float64)
    params = [p for _, p in m.named_parameters()]
    got = torch.autograd.grad((out.double() * probe.to(out.device)).sum(), [h, *params])

    p64 = {n: p.detach().double().cpu().requires_grad_() for n, p in m.named_parameters()}
    h64 = h.detach().double().cpu().requires_grad_()
    ref_out = reference_forward(m, p64, h64)
    want = torch.autograd.grad((ref_out * probe).sum(), [h64, *p64.values()])

    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=tol, atol=tol)
    names = ["input"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol, atol=tol, msg=lambda msg, n=name: f"d/d {n}: {msg}")


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    for module, var in ((scan_dispatch, scan_dispatch.ENV_VAR), (conv_dispatch, conv_dispatch.CONV_ENV_VAR)):
        monkeypatch.setattr(module, "_logged", set())
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "scan_backend, conv_backend", [("torch", "torch"), ("reference", "reference"), ("torch", "reference")]
)
@pytest.mark.parametrize("d_model, d_state, seqlen", [(6, 16, 11), (8, 4, 3)])
def test_fp64_forward_and_every_gradient_match_the_reference(scan_backend, conv_backend, d_model, d_state, seqlen):
    torch.manual_seed(0)
    m = perturb_(Mamba(d_model, d_state=d_state, scan_backend=scan_backend, conv_backend=conv_backend).double())
    h = torch.randn(2, seqlen, d_model, dtype=torch.float64)
    check_against_reference(m, h, tol=1e-10)


def test_fp32_matches_the_reference_and_bias_options():
    torch.manual_seed(1)
    m = perturb_(Mamba(12, d_state=8, d_conv=3, expand=1.5, dt_rank=5, bias=False, conv_bias=True))
    check_against_reference(m, torch.randn(3, 20, 12), tol=2e-4)


def test_in_proj_and_out_proj_biases_are_used():
    torch.manual_seed(2)
    m = Mamba(4, d_state=4, bias=True).double()
    h = torch.randn(1, 5, 4, dtype=torch.float64)
    before = m(h)
    with torch.no_grad():
        m.in_proj.bias.fill_(0.3)
        m.out_proj.bias.fill_(-0.2)
    assert not torch.allclose(before, m(h))


# ----------------------------------------------------------------------------- Triton (interpreter on CPU)

# The interpreter's mode is fixed when triton is first imported (tests/ops/test_selective_scan_triton.py
# does the same): set TRITON_INTERPRET around that import on machines without CUDA.
_PREVIOUS = os.environ.get("TRITON_INTERPRET")
INTERPRET = _PREVIOUS == "1" or (_PREVIOUS is None and not torch.cuda.is_available())
with temporary_env("TRITON_INTERPRET", "1" if INTERPRET else (_PREVIOUS or "0")):
    _TRITON, _TRITON_WHY = scan_dispatch._triton_module()
needs_triton = pytest.mark.skipif(
    _TRITON is None or not (INTERPRET or torch.cuda.is_available()), reason=_TRITON_WHY or "no CUDA device"
)


@needs_triton
def test_triton_scan_backend_matches_the_reference(monkeypatch):
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    device = "cpu" if INTERPRET else "cuda"
    torch.manual_seed(3)
    m = perturb_(Mamba(4, d_state=4, scan_backend="triton", conv_backend="torch")).to(device)
    check_against_reference(m, torch.randn(1, 6, 4, device=device), tol=2e-4)


# ----------------------------------------------------------------------------- parameters and init


@pytest.mark.parametrize(
    "d_model, path, prefix",
    [
        (6, "ultralight_vmunet_keys.txt", "encoder4.0.mamba."),  # UltraLight: C/4 = 6 channels
        (16, "ultralight_vmunet_keys.txt", "decoder1.0.mamba."),
        (32, "lightm_unet_2d_keys.txt", "down_layers.0.1.conv1.mamba."),
        (256, "lightm_unet_2d_keys.txt", "down_layers.3.1.conv1.mamba."),
    ],
)
def test_parameter_names_shapes_and_order_match_the_official_block(d_model, path, prefix, official_keys):
    expected = official_keys(path, prefix)
    assert expected, f"no {prefix} keys in {path}"
    got = [(k, tuple(v.shape)) for k, v in Mamba(d_model).state_dict().items()]
    assert got == expected
    assert sum(p.numel() for p in Mamba(d_model).parameters()) == sum(math.prod(s) for _, s in expected)


def test_dt_rank_and_sizes():
    m = Mamba(33, d_state=8, expand=3)
    assert (m.d_inner, m.dt_rank) == (99, 3)  # dt_rank "auto" = ceil(d_model / 16)
    assert Mamba(16, dt_rank=7).dt_rank == 7


def test_init_rules():
    torch.manual_seed(4)
    dt_min, dt_max = 1e-3, 1e-1
    m = Mamba(512, d_state=16, dt_min=dt_min, dt_max=dt_max)  # d_inner 1024 samples of dt
    dt = F.softplus(m.dt_proj.bias.detach().double())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    # log-uniform over [dt_min, dt_max]: half of the values below the geometric mean, both ends reached
    below = (dt < math.sqrt(dt_min * dt_max)).double().mean().item()
    assert 0.45 < below < 0.55
    assert dt.min() < dt_min * 1.05 and dt.max() > dt_max * 0.95
    std = m.dt_rank**-0.5
    w = m.dt_proj.weight.detach()
    assert w.abs().max() <= std and w.abs().max() > 0.9 * std  # uniform(-std, std)
    expected_A_log = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(m.d_inner, 16)
    assert torch.equal(m.A_log.detach(), expected_A_log)
    assert torch.equal(m.D.detach(), torch.ones(m.d_inner))
    assert m.A_log.dtype == m.D.dtype == torch.float32
    assert m.dt_proj.bias._no_reinit is True
    assert m.A_log._no_weight_decay is True and m.D._no_weight_decay is True
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.x_proj.bias is None
    assert m.conv1d.bias is not None and m.conv1d.groups == m.d_inner


def test_init_floor_and_constant_dt_init():
    m = Mamba(64, dt_min=1e-7, dt_max=2e-7, dt_init_floor=1e-4, dt_init="constant", dt_scale=2.0)
    floor = torch.full((128,), 1e-4, dtype=torch.float64)
    torch.testing.assert_close(F.softplus(m.dt_proj.bias.detach().double()), floor)
    assert torch.equal(m.dt_proj.weight.detach(), torch.full_like(m.dt_proj.weight, 2.0 * m.dt_rank**-0.5))
    with pytest.raises(NotImplementedError, match="dt_init"):
        Mamba(8, dt_init="zeros")


def test_one_seed_gives_the_official_construction_order():
    # mamba_simple.Mamba.__init__ draws in this order: in_proj, conv1d, x_proj, dt_proj (default
    # init), dt_proj.weight uniform, dt ~ rand(d_inner), out_proj.
    d_model, d_inner, dt_rank, d_state = 8, 16, 1, 16
    torch.manual_seed(11)
    in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
    conv1d = nn.Conv1d(d_inner, d_inner, 4, groups=d_inner, padding=3)
    x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
    dt_proj = nn.Linear(dt_rank, d_inner)
    nn.init.uniform_(dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
    dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
    out_proj = nn.Linear(d_inner, d_model, bias=False)
    torch.manual_seed(11)
    m = Mamba(d_model)
    pairs = ((m.in_proj, in_proj), (m.conv1d, conv1d), (m.x_proj, x_proj), (m.dt_proj, dt_proj), (m.out_proj, out_proj))
    for mine, theirs in pairs:
        assert torch.equal(mine.weight, theirs.weight)
    assert torch.equal(m.conv1d.bias, conv1d.bias)
    torch.testing.assert_close(F.softplus(m.dt_proj.bias.detach()), dt, rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------- backends


def test_backends_are_attributes_and_unavailable_ones_are_errors(caplog):
    m = Mamba(4, d_state=4)
    h = torch.randn(1, 5, 4)
    with caplog.at_level(logging.INFO, logger="vmbench.ops"):
        m(h)
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "selective scan on cpu uses the 'torch' backend" in messages
    assert "causal conv1d on cpu uses the 'torch' backend" in messages
    m.scan_backend = "cuda"
    with pytest.raises(BackendUnavailableError, match="selective-scan backend 'cuda'"):
        m(h)
    m.scan_backend, m.conv_backend = None, "cuda"
    with pytest.raises(BackendUnavailableError, match="causal-conv1d backend 'cuda'"):
        m(h)


def test_incremental_decoding_is_refused():
    with pytest.raises(NotImplementedError, match="inference_params"):
        Mamba(4)(torch.randn(1, 2, 4), inference_params=object())
