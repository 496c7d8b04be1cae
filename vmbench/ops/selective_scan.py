"""Selective scan dispatch: one entry point, explicit backends.

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False, backend=None)`` has the semantics of mamba-ssm's ``selective_scan_fn``.

Backends:

``cuda``
    mamba-ssm's compiled kernel (``selective_scan_cuda``); inputs on a CUDA device.
``triton``
    vmbench's fused Triton kernels (``selective_scan_triton``), forward and backward: needs the
    ``triton`` package and inputs on a CUDA device, or ``TRITON_INTERPRET=1`` (set before triton is
    first imported), which runs them on CPU tensors through Triton's interpreter (slow; for tests).
    fp32/bf16/fp16 inputs, fp32 compute; no fp64.
``torch``
    vmbench's own PyTorch scan (``selective_scan_torch``): O(L) time and memory in forward and
    backward, any device. The default on CPU.
``reference``
    The plain scan in ``selective_scan_ref``; slow, fp64-capable, the test oracle.

Choice: the ``backend=`` argument, else the ``VMBENCH_SCAN_BACKEND`` environment variable, else
automatic: for CUDA inputs ``cuda`` when mamba-ssm's kernel imports, else ``triton`` when triton
imports, else ``torch``; for any other device ``torch`` (also under ``TRITON_INTERPRET=1``: the
interpreter is a test tool, never chosen automatically). fp64 inputs on an automatically chosen
``triton`` use ``torch``. The backend chosen for each (backend, device type) is logged once with the
reason. An explicitly requested backend that cannot run raises :class:`BackendUnavailableError`
saying what to install; it never falls back silently.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from vmbench.errors import BackendUnavailableError
from vmbench.ops.determinism import AlertInBackward
from vmbench.ops.dispatch import choose_backend
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

ENV_VAR = "VMBENCH_SCAN_BACKEND"
BACKENDS = ("cuda", "triton", "torch", "reference")
TRITON_INTERPRET_VAR = "TRITON_INTERPRET"
_logged: set[tuple[str, str]] = set()


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


def _triton_interpret_requested() -> bool:
    """``TRITON_INTERPRET`` as Triton reads it (read at call time, without importing triton)."""
    return os.environ.get(TRITON_INTERPRET_VAR, "").strip().lower() in ("1", "true", "on", "yes")


_triton_import: tuple[object | None, str] | None = None
_TRITON_INSTALL = "install triton (pip install triton, or the 'gpu' extra: pip install 'vmbench[gpu]')"


def _triton_module():
    """(vmbench.ops.selective_scan_triton or None, why not). Imported lazily: importing triton fixes
    its interpreter/compiled mode for the process, so it must not happen at vmbench import time."""
    global _triton_import
    if _triton_import is None:
        try:
            import vmbench.ops.selective_scan_triton as module
        except Exception as err:  # ImportError, or a broken triton install
            _triton_import = (None, f"triton does not import ({type(err).__name__}: {err})")
        else:
            _triton_import = (module, "")
    return _triton_import


def _triton_reason(device: torch.device) -> str | None:
    interpret = _triton_interpret_requested()
    if device.type != "cuda" and not interpret:
        why = (
            f"the 'triton' backend needs inputs on a CUDA device, got {device.type} (or set "
            f"{TRITON_INTERPRET_VAR}=1 before triton is imported to run Triton's interpreter on CPU)"
        )
        if importlib.util.find_spec("triton") is None:  # does not import triton
            why += f"; triton is not installed: {_TRITON_INSTALL}"
        return why
    module, why = _triton_module()
    if module is None:
        return f"{why}; {_TRITON_INSTALL}"
    if module.INTERPRET != interpret:
        return (
            f"triton was first imported with {TRITON_INTERPRET_VAR}={int(module.INTERPRET)} but it is now "
            f"{int(interpret)}; set {TRITON_INTERPRET_VAR} before triton is first imported in this process"
        )
    return None


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    if name == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend needs inputs on a CUDA device, got {device.type}"
        fn, why = _cuda_kernel()
        return None if fn is not None else why + "; install the 'cuda' extra (pip install 'vmbench[cuda]')"
    if name == "triton":
        return _triton_reason(device)
    if name in ("torch", "reference"):
        return None
    raise BackendUnavailableError(f"unknown selective-scan backend {name!r}; choose one of {', '.join(BACKENDS)}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first."""
    device = torch.device(device)
    return [name for name in BACKENDS if _unavailable_reason(name, device) is None]


def resolve_backend(
    backend: str | None = None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> str:
    """The backend a call with ``backend`` on ``device`` (inputs of ``dtype``) would use.

    Raises :class:`BackendUnavailableError` if an explicitly requested backend cannot run.
    """
    device = torch.device(device)

    def unavailable(name: str) -> str | None:
        reason = _unavailable_reason(name, device)
        if reason is None and name == "triton" and dtype == torch.float64:
            reason = "it computes in fp32 and does not take fp64 inputs; use 'torch' or 'reference' for fp64"
        return reason

    def automatic() -> tuple[str, str]:
        chosen, why = _automatic(device)
        if chosen == "triton" and dtype == torch.float64:
            chosen, why = "torch", "automatic; fp64 inputs, which the Triton kernels do not take"
        return chosen, why

    return choose_backend("selective-scan", backend, ENV_VAR, device, BACKENDS, unavailable, automatic, _logged)


def _automatic(device: torch.device) -> tuple[str, str]:
    """(backend, reason) for automatic choice: on CUDA mamba-ssm's kernel, else Triton, else torch."""
    if device.type != "cuda":
        return "torch", "automatic"
    cuda_why = _unavailable_reason("cuda", device)
    if cuda_why is None:
        return "cuda", "automatic; mamba-ssm's compiled kernel imports"
    triton_why = _unavailable_reason("triton", device)
    if triton_why is None:
        return "triton", f"automatic; {_cuda_kernel()[1]}"
    return "torch", f"automatic; {_cuda_kernel()[1]}; {triton_why}"


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


MAMBA_NONDETERMINISTIC = "mamba-ssm's selective-scan backward (the 'cuda' backend) adds dB and dC up with atomic adds"


def _mamba_scan(fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """mamba-ssm's ``selective_scan_fn``, its backward following torch.use_deterministic_algorithms
    as the Triton backend's does (the alert runs just before mamba-ssm's backward)."""
    result = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out = result[0] if return_last_state else result
    if not out.requires_grad:
        return result
    out = AlertInBackward.apply(out, MAMBA_NONDETERMINISTIC)
    return (out, result[1]) if return_last_state else out


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
    name = resolve_backend(backend, u.device, u.dtype)
    if name == "triton":
        module, _ = _triton_module()
        return module.selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "cuda":
        fn, _ = _cuda_kernel()
        return _mamba_scan(fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "torch":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
