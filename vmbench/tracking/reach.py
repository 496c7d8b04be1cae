"""Fail fast on a tracking store that cannot be used, instead of hanging in MLflow's HTTP retries."""

from __future__ import annotations

import os
from pathlib import Path

from vmbench.errors import ConfigError

__all__ = ["check_tracking_uri"]


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise a one-line ConfigError when ``uri`` names a server that does not answer within
    ``timeout`` seconds (MLflow's client would retry for minutes) or a SQLite file in a folder that
    cannot be created or written."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            reply = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as err:
            reason = type(err).__name__
            raise ConfigError(
                f"--tracking-uri {uri}: no MLflow server answered within {timeout:g} s ({reason}); "
                "start it, or use another URI (default: a SQLite file under vmbench-runs/)"
            ) from None
        if reply.status_code == 401:
            raise ConfigError(f"--tracking-uri {uri}: the server asks for credentials; set MLFLOW_TRACKING_USERNAME "
                              "and MLFLOW_TRACKING_PASSWORD")
        if reply.status_code >= 400:
            raise ConfigError(f"--tracking-uri {uri}: {uri.rstrip('/')}/health answered HTTP {reply.status_code}; "
                              "is this an MLflow tracking server?")
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        folder = path.parent
        if path.exists() and not path.is_file():
            raise ConfigError(f"--tracking-uri {uri}: {path} is not a file")
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ConfigError(f"--tracking-uri {uri}: {existing} is a file, so {folder} cannot be created")
        if existing is not None and not os.access(existing, os.W_OK):
            raise ConfigError(f"--tracking-uri {uri}: {existing} is not writable")
