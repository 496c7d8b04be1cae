"""Numerical helpers every loss module shares (kept apart so that the loss modules import it, never each other, for these)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_weight", "compute_dtype"]


def compute_dtype(x: Tensor) -> Tensor:
    """Sums over whole images are done in float32 at least (half precision loses them)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x


def check_weight(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value
