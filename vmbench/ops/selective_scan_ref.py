"""Plain selective scan (Mamba-1 S6): the test oracle.

Written for clarity, not speed: it materialises the (batch, dim, L, N) discretised tensors and
loops over time. Run it in float64 to check the fast backends. Semantics follow mamba-ssm's
``selective_scan_ref`` (``state-spaces/mamba`` tag ``v1.0.1``, VM-UNet's pin,
``mamba_ssm/ops/selective_scan_interface.py``; unchanged at ``v2.3.2.post1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, G, N, L) -> (batch, dim, N, L): channel d uses group d // (dim // G)."""
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Reference scan. Computes in float32, or float64 when ``u`` is float64.

    u, delta: (batch, dim, L); A: (dim, N); B, C: (dim, N), (batch, N, L) or (batch, G, N, L);
    D, delta_bias: (dim,); z: (batch, dim, L). Returns out (batch, dim, L) in ``u.dtype``
    (and the last state (batch, dim, N) if asked).
    """
    if A.is_complex():
        raise NotImplementedError("complex A is not supported by vmbench (VM-UNet uses real A)")
    out_dtype = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(compute)
    delta = delta.to(compute)
    A = A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, as mamba-ssm
    batch, dim, length = u.shape
    # Bring B and C to (batch, dim, N, L) or (dim, N).
    B = B.to(compute)
    C = C.to(compute)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if B.dim() == 4:
        B = expand_groups(B, dim)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if C.dim() == 4:
        C = expand_groups(C, dim)

    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 2:
        delta_B_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    else:
        delta_B_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)

    state = u.new_zeros((batch, dim, A.shape[1]))
    ys = []
    # unbind() gives every step's slice as one autograd node; indexing [:, :, t] inside the loop
    # would add a node per step whose backward writes a full-length gradient: O(L^2) backward.
    steps_A, steps_Bu = delta_A.unbind(2), delta_B_u.unbind(2)
    steps_C = C.unbind(3) if C.dim() == 4 else None
    for t in range(length):
        state = steps_A[t] * state + steps_Bu[t]
        if steps_C is None:
            ys.append(torch.einsum("bdn,dn->bd", state, C))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", state, steps_C[t]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D.to(compute)[..., None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(out_dtype)
    return (out, state) if return_last_state else out
