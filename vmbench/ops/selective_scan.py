"""Selective scan dispatch: one entry point, explicit backends.

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False, backend=None)`` has the semantics of mamba-ssm's ``selective_scan_fn``.

Backends:

``cuda``
    mamba-ssm's compiled kernel (``selective_scan_cuda``); inputs on a CUDA device.
``torch``
    vmbench's own PyTorch scan (``selective_scan_torch``): O(L) time and memory in forward and
    backward, any device. The default without the CUDA kernel.
``reference``
    The plain scan in ``selective_scan_ref``; slow, fp64-capable, the test oracle.

Choice: the ``backend=`` argument, else the ``VMBENCH_SCAN_BACKEND`` environment variable, else
automatic (``cuda`` when its kernel imports and the inputs are on CUDA, otherwise ``torch``).
The backend chosen for each (backend, device type) is logged once. An explicitly requested
backend that cannot run raises :class:`BackendUnavailableError`; it never falls back silently.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from vmbench.ops.selective_scan_ref import selective_scan_ref
from vmbench.ops.selective_scan_torch import selective_scan_torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailableError",
    "available_backends",
    "resolve_backend",
    "selective_scan",
]

log = logging.getLogger("vmbench.ops")

ENV_VAR = "VMBENCH_SCAN_BACKEND"
BACKENDS = ("cuda", "torch", "reference")
_logged: set[tuple[str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """A selective-scan backend was requested that cannot run here."""


@functools.lru_cache(maxsize=None)
def _cuda_kernel() -> tuple[object | None, str]:
    """(mamba-ssm's selective_scan_fn or None, why not).

    Detected by importing the compiled extension itself, catching every exception: a CUDA/ABI
    mismatch raises OSError or ImportError with 'undefined symbol', and mamba-ssm 2.x imports
    it unguarded, so ``import mamba_ssm`` succeeding proves nothing.
    """
    try:
        import selective_scan_cuda  # noqa: F401
    except Exception as err:  # any import failure means the kernel is not usable
        return None, f"mamba-ssm's compiled kernel does not import ({type(err).__name__}: {err})"
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:
        return None, f"mamba_ssm.ops.selective_scan_interface does not import ({type(err).__name__}: {err})"
    return selective_scan_fn, ""


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    if name == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend needs inputs on a CUDA device, got {device.type}"
        fn, why = _cuda_kernel()
        return None if fn is not None else why + "; install the 'cuda' extra (pip install 'vmbench[cuda]')"
    if name in ("torch", "reference"):
        return None
    raise BackendUnavailableError(f"unknown selective-scan backend {name!r}; choose one of {', '.join(BACKENDS)}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first."""
    device = torch.device(device)
    return [name for name in BACKENDS if _unavailable_reason(name, device) is None]


def resolve_backend(backend: str | None = None, device: torch.device | str = "cpu") -> str:
    """The backend a call with ``backend`` on ``device`` would use (raises if unavailable)."""
    device = torch.device(device)
    source = "argument"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = f"${ENV_VAR}"
    if backend is None or backend == "auto":
        chosen = "cuda" if device.type == "cuda" and _unavailable_reason("cuda", device) is None else "torch"
        why = "automatic"
        if device.type == "cuda" and chosen != "cuda":
            why += f"; {_cuda_kernel()[1]}"
    else:
        backend = backend.strip().lower()
        reason = _unavailable_reason(backend, device)
        if reason is not None:
            raise BackendUnavailableError(f"selective-scan backend {backend!r} (from {source}) is unavailable: {reason}")
        chosen, why = backend, f"from {source}"
    key = (chosen, device.type)
    if key not in _logged:
        _logged.add(key)
        log.info("selective scan on %s uses the %r backend (%s)", device.type, chosen, why)
    return chosen


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise NotImplementedError("selective_scan: complex A is not supported (VM-UNet uses real A)")
    n_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = t.shape == (dim, n_state)
        elif t.dim() == 3:
            ok = t.shape == (batch, n_state, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (n_state, length) and t.shape[1] > 0 and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (dim, N), (batch, N, L) or (batch, G, N, L) with G dividing "
                f"dim={dim} (N={n_state}, L={length}), got {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z shape {tuple(z.shape)} != u shape {tuple(u.shape)}")


def selective_scan(
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
    backend: str | None = None,
):
    """Mamba-1 selective scan; see the module docstring for shapes and backend choice.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t, y_t = C_t . h_t + D * u_t, out = y * silu(z),
    with dt = softplus(delta + delta_bias) if ``delta_softplus``. Computed in fp32 (fp64 for fp64
    inputs on the torch/reference backends); the output has ``u``'s dtype.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    if name == "cuda":
        fn, _ = _cuda_kernel()
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "torch":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
