"""Operators: the selective scan and the causal depthwise conv1d, each with explicit backends."""

from vmbench.ops.causal_conv1d import (
    CONV_BACKENDS,
    available_conv_backends,
    causal_conv1d,
    causal_conv1d_ref,
    resolve_conv_backend,
)
from vmbench.ops.selective_scan import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    resolve_backend,
    selective_scan,
)
from vmbench.ops.selective_scan_ref import selective_scan_ref

__all__ = [
    "BACKENDS",
    "CONV_BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "available_conv_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "resolve_backend",
    "resolve_conv_backend",
    "selective_scan",
    "selective_scan_ref",
]
