"""torch.use_deterministic_algorithms for the scan backends whose backward adds up with atomics."""

from __future__ import annotations

import warnings

import torch


def alert_not_deterministic(what: str) -> None:
    """Raise (warn under ``warn_only=True``) if deterministic algorithms are requested, as PyTorch's
    own atomic-add kernels do. ``what``: the operation and why its result varies."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"{what}, so their last bits vary between runs, and torch.use_deterministic_algorithms(True) is set: use "
        "backend='torch' (or VMBENCH_SCAN_BACKEND=torch) for bitwise-reproducible gradients"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)


class AlertInBackward(torch.autograd.Function):
    """Identity on a tensor whose backward alerts first: wraps the output of a kernel (mamba-ssm's)
    whose own backward cannot be changed."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, what: str) -> torch.Tensor:
        ctx.what = what
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        alert_not_deterministic(ctx.what)
        return grad, None
