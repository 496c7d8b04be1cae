"""The Mamba block (Gu & Dao 2023) on vmbench's own ops: no mamba-ssm or causal-conv1d build needed.

:class:`Mamba` takes the constructor arguments of ``mamba_ssm.modules.mamba_simple.Mamba``
(state-spaces/mamba, ``mamba_ssm/modules/mamba_simple.py``, commit e9594ce1 = 2.3.2.post1; the
same layout in 1.0.1) and has the same parameters, names, shapes and initialisation, so official
checkpoints load with ``strict=True``. Its forward is that file's unfused path: in_proj -> causal
depthwise conv1d + SiLU -> x_proj split into (dt, B, C) -> dt_proj (without bias) -> selective
scan with D, the gate SiLU(z), the dt_proj bias and softplus -> out_proj. mamba-ssm's fused
``mamba_inner_fn`` computes the same function.

The conv runs on :func:`vmbench.ops.causal_conv1d` and the scan on
:func:`vmbench.ops.selective_scan`, each on the backend named by ``conv_backend`` /
``scan_backend`` (constructor arguments and attributes), else its environment variable, else
chosen automatically (logged once). UltraLight VM-UNet, LightM-UNet and U-Mamba build on this block.

Ablation twins (``ablation``, set on a built model by :func:`vmbench.ablation.ablate`): ``no-ssm``
keeps in_proj, the conv, the gate and out_proj and replaces the selective scan by its skip path
``D * u * SiLU(z)`` (:func:`ssm_skip`: the state-space recurrence, with x_proj, dt_proj and A_log,
is gone); ``no-mamba`` makes the whole block the identity (the mixer removed, the caller's residual
path kept: the "No-Mamba" control of Isensee et al., nnU-Net Revisited, MICCAI 2024,
arXiv 2404.09556). The parameters stay in the state dict, so a twin loads the model's checkpoints.

Differences from the official class, on purpose:

* ``use_fast_path`` is kept as an attribute but selects nothing: vmbench has one (unfused) path.
* No incremental decoding (``inference_params``, ``step``): segmentation models never decode.
* ``A_log``, ``D`` and the dt bias enter the scan in fp32, as in the official code, except when
  the block runs in fp64 (the tests' precision), where they stay fp64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vmbench.ops import causal_conv1d, selective_scan
from vmbench.ablation import NO_MAMBA, NO_SSM

__all__ = ["Mamba", "inverse_softplus", "ssm_skip"]


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0: x = y + log(1 - exp(-y)), stable for small y."""
    return y + torch.log(-torch.expm1(-y))


def ssm_skip(u: torch.Tensor, D: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """The selective scan without its recurrence: ``D * u`` (times SiLU(z) when given).

    What :func:`vmbench.ops.selective_scan` returns with the state's contribution ``C_t . h_t``
    taken out; computed in the scan's precision (fp32, fp64 for fp64) and returned in ``u``'s dtype,
    as the scan does. u, z: (batch, dim, L); D: (dim,).
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    y = u.to(compute) * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(u.dtype)


def check_ablation(module: nn.Module, ablation: str | None) -> str | None:
    """``ablation`` if ``module`` can take it (None: the full block)."""
    if ablation is not None and ablation not in module.ABLATIONS:
        raise ValueError(f"{type(module).__name__}: ablation must be one of {module.ABLATIONS} or None, got {ablation!r}")
    return ablation


class Mamba(nn.Module):
    """Mamba-1 block: (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    Arguments as ``mamba_ssm.modules.mamba_simple.Mamba``; ``scan_backend`` and ``conv_backend``
    (None: the environment variable or the automatic choice) pick the ops' backends and may be
    changed on the instance at any time; so may ``ablation`` (None, ``no-ssm`` or ``no-mamba``:
    see the module's docstring).
    """

    ABLATIONS = (NO_SSM, NO_MAMBA)  # the parts vmbench.ablation.ablate may remove

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
        *,
        scan_backend: str | None = None,
        conv_backend: str | None = None,
        ablation: str | None = None,
    ):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.scan_backend = scan_backend
        self.conv_backend = conv_backend
        self.ablation = check_ablation(self, ablation)
        self.activation = "silu"

        # Submodules are created in the official order, so that one seed gives the same weights.
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory_kwargs,
        )
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt_proj.weight: keeps the variance of dt at init.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt_proj.bias: softplus(bias) log-uniform in [dt_min, dt_max] (floored at dt_init_floor).
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus(dt))
        # Initialisers that zero every Linear bias must leave this one alone (mamba-ssm's convention).
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A = -(1, 2, ..., d_state) for every channel, kept in fp32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # skip connection, fp32
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def forward(self, hidden_states: torch.Tensor, inference_params=None) -> torch.Tensor:
        """(batch, seqlen, d_model) -> (batch, seqlen, d_model)."""
        if inference_params is not None:
            raise NotImplementedError("vmbench's Mamba block has no incremental decoding (inference_params)")
        if self.ablation == NO_MAMBA:
            return hidden_states
        batch, seqlen, _ = hidden_states.shape
        # in_proj as one (2*d_inner, d_model) @ (d_model, batch*seqlen) product, straight into the
        # channels-first layout the conv and the scan take.
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * seqlen, -1).t()).reshape(-1, batch, seqlen)
        xz = xz.transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.activation, self.conv_backend)
        if self.ablation == NO_SSM:
            return self.out_proj(ssm_skip(x, self.D, z).transpose(1, 2))

        scan_dtype = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        A = -torch.exp(self.A_log.to(scan_dtype))
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, self.d_inner))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).reshape(self.d_inner, batch, seqlen).transpose(0, 1)
        B = B.reshape(batch, seqlen, self.d_state).transpose(1, 2).contiguous()
        C = C.reshape(batch, seqlen, self.d_state).transpose(1, 2).contiguous()
        y = selective_scan(
            x,
            dt,
            A,
            B,
            C,
            self.D.to(scan_dtype),
            z=z,
            delta_bias=self.dt_proj.bias.to(scan_dtype),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return self.out_proj(y.transpose(1, 2))

    def silenced_parameters(self) -> list[nn.Parameter]:
        """The parameters that no longer act under ``self.ablation`` (they stay in the state dict)."""
        if self.ablation == NO_MAMBA:
            return list(self.parameters())
        if self.ablation == NO_SSM:  # x_proj only feeds the scan its (dt, B, C)
            return [*self.x_proj.parameters(), *self.dt_proj.parameters(), self.A_log]
        return []

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend}, conv_backend={self.conv_backend}"
            + (f", ablation={self.ablation}" if self.ablation else "")
        )
