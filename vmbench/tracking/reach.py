"""Fail fast on a tracking store that cannot be used, instead of hanging in MLflow's HTTP retries.

Checked the same way whether the URI came from ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``
(``source`` names which); every network wait is bounded by ``timeout`` seconds, stated in the
message.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from vmbench.errors import ConfigError

__all__ = ["check_tracking_uri"]

# SQL stores MLflow reaches through SQLAlchemy, and the Python drivers each needs (any one of).
_SQL_DRIVERS = {
    "postgresql": ("psycopg2", "psycopg"),
    "mysql": ("pymysql", "MySQLdb"),
    "mssql": ("pyodbc", "pymssql"),
}
_SCHEMES = ("http", "https", "sqlite", "file", "databricks", *_SQL_DRIVERS)


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    if not sep:
        return "sqlite" if uri.startswith("sqlite:") else "file"  # a bare path is MLflow's file store
    return head.split("+", 1)[0].lower()


def check_tracking_uri(uri: str, timeout: float = 5.0, *, source: str = "--tracking-uri", read_only: bool = False) -> None:
    """Raise a one-line ConfigError when ``uri`` cannot serve as an MLflow store.

    A scheme MLflow cannot use (or whose SQL driver is not installed); a server that does not
    answer within ``timeout`` seconds (MLflow's client would retry for minutes) or is not an
    MLflow tracking server; a SQLite file in a folder that cannot be created or (unless
    ``read_only``: a command that only reads) written.
    """
    scheme = _scheme(uri)
    if scheme not in _SCHEMES:
        raise ConfigError(f"{source} {uri}: unsupported scheme {scheme + '://'!r}; use http(s)://HOST:PORT, "
                          "sqlite:///FILE or a SQL database URI (postgresql://, mysql://)")
    if scheme in _SQL_DRIVERS:
        drivers = _SQL_DRIVERS[scheme]
        if not any(importlib.util.find_spec(d) for d in drivers):
            raise ConfigError(f"{source} {uri}: a {scheme} store needs the Python driver {' or '.join(drivers)}, "
                              "which is not installed here")
        return
    if scheme in ("http", "https"):
        _check_server(uri, timeout, source)
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        folder = path.parent
        if path.exists() and not path.is_file():
            raise ConfigError(f"{source} {uri}: {path} is not a file")
        if read_only:
            return  # readers need the file (their own check), not a writable folder
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ConfigError(f"{source} {uri}: {existing} is a file, so {folder} cannot be created")
        if existing is not None and not os.access(existing, os.W_OK):
            raise ConfigError(f"{source} {uri}: {existing} is not writable")


def _check_server(uri: str, timeout: float, source: str) -> None:
    import requests

    base = uri.rstrip("/")
    try:
        reply = requests.get(base + "/health", timeout=timeout)
    except requests.RequestException as err:
        reason = type(err).__name__
        raise ConfigError(
            f"{source} {uri}: no MLflow server answered within {timeout:g} s ({reason}); "
            "start it, or use another URI (default: a SQLite file under vmbench-runs/)"
        ) from None
    if reply.status_code == 401:
        raise ConfigError(f"{source} {uri}: the server asks for credentials; set MLFLOW_TRACKING_USERNAME "
                          "and MLFLOW_TRACKING_PASSWORD")
    if reply.status_code >= 400:
        raise ConfigError(f"{source} {uri}: {base}/health answered HTTP {reply.status_code}; "
                          "is this an MLflow tracking server?")
    # /health answers 200 on many servers; MLflow's REST API answers JSON with an "experiments" list.
    try:
        api = requests.get(base + "/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=timeout)
        body = api.json() if api.status_code == 200 else None
    except (requests.RequestException, ValueError):
        body = None
    if not isinstance(body, dict) or not (set(body) <= {"experiments", "next_page_token"}):
        raise ConfigError(f"{source} {uri}: the server there is not an MLflow tracking server (its REST API "
                          f"{base}/api/2.0/mlflow/experiments/search did not answer within {timeout:g} s as MLflow's does)")
