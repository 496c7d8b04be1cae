"""Backend choice shared by vmbench's operators (selective scan, causal conv1d).

One rule for every op: the ``backend=`` argument, else the op's environment variable, else the
op's automatic choice. An explicitly requested backend that cannot run raises
:class:`~vmbench.errors.BackendUnavailableError` with the reason and the fix; it never falls back
silently. The backend used for each (backend, device type) is logged once, with the reason, on the
``vmbench.ops`` logger (``vmbench -v`` shows it).
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch

from vmbench.errors import BackendUnavailableError

__all__ = ["choose_backend", "log"]

log = logging.getLogger("vmbench.ops")


def choose_backend(
    op: str,
    backend: str | None,
    env_var: str,
    device: torch.device,
    names: tuple[str, ...],
    unavailable_reason: Callable[[str], str | None],
    automatic: Callable[[], tuple[str, str]],
    logged: set[tuple[str, str]],
) -> str:
    """The backend ``op`` (e.g. ``"selective-scan"``) runs on ``device``.

    ``unavailable_reason(name)`` says why a requested backend cannot run (None: it can);
    ``automatic()`` returns ``(backend, reason)``; ``logged`` holds the (backend, device type)
    pairs already logged by this op.
    """
    source = "argument"
    if backend is None:
        backend = os.environ.get(env_var) or None
        source = f"${env_var}"
    if backend is None or backend.strip().lower() == "auto":
        chosen, why = automatic()
    else:
        name = backend.strip().lower()
        if name not in names:
            raise BackendUnavailableError(
                f"unknown {op} backend {name!r} (from {source}); choose one of {', '.join(names)} or auto"
            )
        reason = unavailable_reason(name)
        if reason is not None:
            raise BackendUnavailableError(f"{op} backend {name!r} (from {source}) is unavailable: {reason}")
        chosen, why = name, f"from {source}"
    key = (chosen, device.type)
    if key not in logged:
        logged.add(key)
        log.info("%s on %s uses the %r backend (%s)", op.replace("-", " "), device.type, chosen, why)
    return chosen
