"""Causal depthwise conv1d: one entry point, explicit backends.

``causal_conv1d(x, weight, bias=None, activation=None, backend=None)`` has the semantics of
``causal_conv1d_fn`` from Dao-AILab/causal-conv1d (``causal_conv1d/causal_conv1d_interface.py``,
commit 0d2252d): x (batch, dim, seqlen), weight (dim, width), bias (dim,);
out[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k] (zeros before t = 0),
then SiLU if ``activation`` is "silu" or "swish". Mamba's block runs it on its ``x`` half.

Backends:

``cuda``
    The ``causal_conv1d`` package's compiled kernel (``pip install 'vmbench[cuda]'``); CUDA
    inputs of fp32/fp16/bf16, width 2 to 4 (the kernel's limits).
``torch``
    ``F.conv1d`` with ``groups=dim`` and ``width - 1`` zeros of padding, cut to the first
    ``seqlen`` outputs: what mamba-ssm's ``Mamba`` does when causal-conv1d is missing. Any device
    and dtype. The automatic choice everywhere else.
``reference``
    :func:`causal_conv1d_ref`: a plain loop over the taps in fp64, the test oracle.

Choice: ``backend=``, else ``VMBENCH_CONV_BACKEND``, else automatic (``cuda`` for CUDA inputs the
kernel takes when it imports, otherwise ``torch``), logged once per (backend, device type). An
explicitly requested backend that cannot run raises :class:`vmbench.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from vmbench.ops.dispatch import choose_backend

__all__ = [
    "CONV_BACKENDS",
    "CONV_ENV_VAR",
    "available_conv_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "resolve_conv_backend",
]

CONV_ENV_VAR = "VMBENCH_CONV_BACKEND"
CONV_BACKENDS = ("cuda", "torch", "reference")
ACTIVATIONS = (None, "silu", "swish")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNEL_WIDTHS = range(2, 5)
_logged: set[tuple[str, str]] = set()


@functools.lru_cache(maxsize=None)
def _cuda_kernel() -> tuple[object | None, str]:
    """(causal_conv1d_fn or None, why not).

    Detected by importing the compiled extension itself and catching every exception: a CUDA or
    ABI mismatch raises OSError or ImportError ('undefined symbol'), not only ModuleNotFoundError.
    """
    try:
        import causal_conv1d_cuda  # noqa: F401
    except Exception as err:  # any import failure means the kernel is not usable
        return None, f"causal-conv1d's compiled kernel does not import ({type(err).__name__}: {err})"
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as err:
        return None, f"the causal_conv1d package does not import ({type(err).__name__}: {err})"
    return causal_conv1d_fn, ""


def _unavailable_reason(name: str, device: torch.device, dtype: torch.dtype | None, width: int | None) -> str | None:
    if name != "cuda":
        return None
    if device.type != "cuda":
        return f"the 'cuda' backend needs inputs on a CUDA device, got {device.type}"
    fn, why = _cuda_kernel()
    if fn is None:
        return why + "; install the 'cuda' extra (pip install 'vmbench[cuda]') or use the 'torch' backend"
    if dtype is not None and dtype not in _KERNEL_DTYPES:
        return f"the kernel takes fp32, fp16 or bf16, not {dtype}; use 'torch' or 'reference'"
    if width is not None and width not in _KERNEL_WIDTHS:
        return f"the kernel takes widths 2 to 4, not {width}; use 'torch'"
    return None


def available_conv_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first."""
    device = torch.device(device)
    return [name for name in CONV_BACKENDS if _unavailable_reason(name, device, None, None) is None]


def resolve_conv_backend(
    backend: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    width: int | None = None,
) -> str:
    """The backend a call with ``backend`` on ``device`` (inputs of ``dtype``, kernel ``width``) uses.

    Raises :class:`vmbench.errors.BackendUnavailableError` if an explicitly requested backend cannot run.
    """
    device = torch.device(device)

    def automatic() -> tuple[str, str]:
        if device.type != "cuda":
            return "torch", "automatic"
        why = _unavailable_reason("cuda", device, dtype, width)
        return ("cuda", "automatic; causal-conv1d's kernel imports") if why is None else ("torch", f"automatic; {why}")

    return choose_backend(
        "causal-conv1d",
        backend,
        CONV_ENV_VAR,
        device,
        CONV_BACKENDS,
        lambda name: _unavailable_reason(name, device, dtype, width),
        automatic,
        _logged,
    )


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: weight must be (dim={x.shape[1]}, width), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"causal_conv1d: bias must be ({x.shape[1]},), got {tuple(bias.shape)}")


def _causal_conv1d_torch(x, weight, bias, activation):
    """``F.conv1d`` over ``width - 1`` zeros on each side, cut to the causal outputs.

    Like causal-conv1d's own reference, it computes in the weight's dtype and returns x's dtype.
    """
    dim, width = weight.shape
    out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., : x.shape[-1]]
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """The causal depthwise conv1d as a plain loop over the kernel's taps, in fp64 (the oracle).

    Tap k of the kernel multiplies the input ``width - 1 - k`` steps in the past. Differentiable;
    the result has ``x``'s dtype.
    """
    _check_inputs(x, weight, bias, activation)
    seqlen = x.shape[-1]
    width = weight.shape[1]
    x64, w64 = x.double(), weight.double()
    out = torch.zeros_like(x64) if bias is None else bias.double()[None, :, None].expand_as(x64).clone()
    for k in range(width):
        lag = width - 1 - k
        if lag >= seqlen:
            continue
        shifted = torch.cat([x64.new_zeros(x64.shape[:-1] + (lag,)), x64[..., : seqlen - lag]], dim=-1)
        out = out + w64[None, :, k, None] * shifted
    if activation is not None:
        out = out * torch.sigmoid(out)
    return out.to(x.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal depthwise conv1d; see the module docstring for the formula and the backends."""
    _check_inputs(x, weight, bias, activation)
    name = resolve_conv_backend(backend, x.device, x.dtype, weight.shape[1])
    if name == "cuda":
        fn, _ = _cuda_kernel()
        return fn(x, weight, bias, activation=activation)
    if name == "torch":
        return _causal_conv1d_torch(x, weight, bias, activation)
    return causal_conv1d_ref(x, weight, bias, activation)
