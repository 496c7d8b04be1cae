"""Opening an MLflow store safely: one creator at a time, and read-only commands that only read.

* :func:`store_lock` / :func:`prepare_store`: MLflow creates and migrates a SQLite store on first
  use, in several statements; two commands doing it at once both crash and leave it half-migrated.
  The first command to open a store does it under an exclusive ``flock`` on ``FILE.lock`` beside
  the database; the others wait for it (bounded) and then find the store complete.
* :func:`check_store_readable`: ``leaderboard``, ``report`` and ``ui`` never write. Given a SQLite
  file, they first look at it read-only (``mode=ro``): a file that is not an MLflow store (an
  Optuna database, anything else) is one line and stays untouched, where MLflow would add its
  tables to it; a store on a read-only mount is fine, since nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from vmbench.errors import ConfigError

__all__ = ["LOCK_WAIT_S", "check_store_readable", "prepare_store", "sqlite_file", "store_lock"]

LOCK_WAIT_S = 120.0  # creating and migrating a store takes seconds; far longer means a stuck holder

# The tables every MLflow SQL store has had since its first schema.
_MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


@contextlib.contextmanager
def store_lock(uri: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold ``FILE.lock`` (flock) beside a SQLite store; other URIs need no lock (a server serialises)."""
    path = sqlite_file(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"MLflow store {uri}: another process has held {lock} for over {wait_s:g} s "
                                      "while creating the store; stop it, or try again") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def _is_mlflow_store(path: Path) -> bool:
    """True for a complete MLflow SQLite store; False for an empty file; ConfigError for anything else."""
    uri = f"file:{path}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = con.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"MLflow store sqlite:///{path}: not a readable SQLite database ({err}); "
                          "give the store's file (vmbench-runs/mlflow.db)") from None
    if not tables:
        return False
    if not _MLFLOW_TABLES <= tables or version is None:
        raise ConfigError(f"sqlite:///{path}: not an MLflow store (tables {', '.join(sorted(tables)[:5])}…); "
                          "vmbench leaves it untouched: give the MLflow store's file (vmbench-runs/mlflow.db)")
    return True


def prepare_store(uri: str) -> None:
    """Create or migrate a SQLite store under :func:`store_lock`, so a later client finds it complete.

    A file that exists and is not an MLflow store is refused (MLflow would add its tables to it).
    """
    path = sqlite_file(uri)
    if path is None:
        return
    with store_lock(uri):
        if path.exists() and path.stat().st_size and _is_mlflow_store(path):
            return  # complete; migrations of an older schema are MLflow's (and refused by it)
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the tables


def check_store_readable(uri: str) -> None:
    """What a read-only command checks before MLflow opens ``uri``: a SQLite file that exists must be
    a complete MLflow store (read with ``mode=ro``, so nothing is written). A missing file is left to
    the command, which reports that there are no runs; an empty one would get MLflow's tables."""
    path = sqlite_file(uri)
    if path is None or not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"MLflow store {uri}: {path} is a folder, not a SQLite file")
    if not _is_mlflow_store(path):
        raise ConfigError(f"MLflow store {uri}: {path} is empty, not an MLflow store; vmbench only reads here "
                          "(run a training or sweep first)")
