"""Operators: the selective scan and its backends."""

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
    "BackendUnavailableError",
    "available_backends",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
]
