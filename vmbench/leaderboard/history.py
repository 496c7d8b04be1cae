"""Per-epoch metric histories of runs (learning curves, the search trials' cost), read in bulk.

``MlflowClient.get_metric_history`` answers one run and one key per call; for a few thousand
search trials that is minutes. For ``sqlite:`` stores :func:`metric_histories` reads MLflow's
``metrics`` table read-only in one query instead (the same values: ``tests/test_leaderboard.py``
checks the two against each other); other stores go through the client, one call per run and
key, and say so in the log.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Sequence

import pandas as pd

from vmbench.errors import DataError
from vmbench.leaderboard.store import sqlite_path

log = logging.getLogger(__name__)

COLUMNS = ["run_id", "key", "step", "value", "timestamp"]
_METRICS_TABLE = {"run_uuid", "key", "value", "step", "timestamp", "is_nan"}


def metric_histories(tracking_uri: str, run_ids: Sequence[str], keys: Sequence[str], engine: str = "auto") -> pd.DataFrame:
    """Every logged value of ``keys`` for ``run_ids``: columns run_id, key, step, value, timestamp.

    Sorted by run, key, step and time. NaN values are left out. ``engine``: 'sql' (SQLite
    stores), 'mlflow' (any store, one request per run and key) or 'auto'.
    """
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    if not run_ids or not keys:
        return pd.DataFrame(columns=COLUMNS)
    path = sqlite_path(tracking_uri)
    frame = None
    if engine != "mlflow" and path is not None and path.exists():
        frame = _sqlite_histories(path, run_ids, keys)
        if frame is None and engine == "sql":
            raise DataError(f"{path}: MLflow's metrics table has an unknown schema: use engine 'auto' or 'mlflow'")
    if frame is None:
        log.info("reading %d metric histories one by one through MLflow (slow for big stores)", len(run_ids) * len(keys))
        frame = _client_histories(tracking_uri, run_ids, keys)
    return frame.sort_values(["run_id", "key", "step", "timestamp"], kind="stable", ignore_index=True)


def _sqlite_histories(path: Path, run_ids: list[str], keys: list[str]) -> pd.DataFrame | None:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        have = {row[1] for row in con.execute("PRAGMA table_info(metrics)")}
        if not _METRICS_TABLE <= have:
            log.info("metrics table of %s lacks %s: reading histories through MLflow", path, sorted(_METRICS_TABLE - have))
            return None
        con.execute("CREATE TEMP TABLE hist_runs (run_uuid TEXT PRIMARY KEY)")
        con.executemany("INSERT OR IGNORE INTO hist_runs VALUES (?)", [(r,) for r in run_ids])
        frame = pd.read_sql_query(
            "SELECT m.run_uuid AS run_id, m.key, m.step, m.value, m.timestamp FROM metrics m "
            "JOIN hist_runs h ON h.run_uuid = m.run_uuid "
            f"WHERE m.is_nan = 0 AND m.key IN ({','.join('?' * len(keys))})",
            con,
            params=keys,
        )
    except sqlite3.DatabaseError as err:
        log.info("cannot read metric histories from %s (%s): reading them through MLflow", path, err)
        return None
    finally:
        con.close()
    log.info("metric histories of %d runs read from %s by vmbench's read-only SQL reader", len(run_ids), path)
    return frame.astype({"step": "int64", "value": "float64", "timestamp": "int64"})


def _client_histories(tracking_uri: str, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    import math

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    rows = [
        (run_id, key, int(m.step), float(m.value), int(m.timestamp))
        for run_id in run_ids
        for key in keys
        for m in client.get_metric_history(run_id, key)
        if not math.isnan(m.value)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def epoch_costs(histories: pd.DataFrame, time_key: str = "epoch_time_s") -> pd.DataFrame:
    """Per run: epochs trained (distinct steps of ``time_key``) and seconds (sum of its values).

    An epoch logged twice (a retried trial that re-ran it) is one epoch but its time counts twice:
    the device ran it twice.
    """
    times = histories[histories["key"] == time_key]
    if times.empty:
        return pd.DataFrame(columns=["epochs", "seconds"], index=pd.Index([], name="run_id"))
    grouped = times.groupby("run_id")
    return pd.DataFrame({"epochs": grouped["step"].nunique(), "seconds": grouped["value"].sum()})
