"""Everything a report shows, read from an MLflow store once: runs, tables, ranks, budgets, curves."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from vmbench import tracking
from vmbench.leaderboard import budget as budget_mod
from vmbench.leaderboard.board import case_tables, finished_runs, leaderboard
from vmbench.leaderboard.cases import CaseTables
from vmbench.leaderboard.columns import MEASURED
from vmbench.leaderboard.history import metric_histories
from vmbench.leaderboard.rankings import Rankings, rankings_from_cases
from vmbench.leaderboard.store import MlflowPerCaseLoader, as_list, load_runs
from vmbench.leaderboard.tables import Table, split_tables

log = logging.getLogger(__name__)

CURVE_KEYS = ("val_dsc", "train_loss")


@dataclass
class ReportData:
    tracking_uri: str
    experiments: list[str]  # names asked for (empty: every active experiment)
    reference: str | None
    board: pd.DataFrame
    tables: list[Table]
    cases: CaseTables | None
    ranks: Rankings | None
    audit: pd.DataFrame
    curves: pd.DataFrame  # long: run_id, key, step, value + dataset, protocol, model, seed, fold
    n_boot: int
    seed: int
    budget_tolerance: float
    timings: dict[str, float] = field(default_factory=dict)
    runs_read: int = 0

    def measured(self) -> pd.DataFrame:
        return self.board[self.board["kind"] == MEASURED] if not self.board.empty else self.board


def collect(
    tracking_uri: str | None = None,
    experiments: str | Sequence[str] | None = None,
    *,
    reference: str | None = "vmunet",
    n_boot: int = 1000,
    seed: int = 0,
    budget_tolerance: float = 0.10,
    curve_keys: Sequence[str] = CURVE_KEYS,
) -> ReportData:
    """Read the store: runs of every stage (one query), per-case files, metric histories, study files."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    runs = load_runs(tracking_uri, experiment=experiments, stage="all", params=True)
    uri = runs.attrs["tracking_uri"]
    timings["load runs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stage = runs[f"tags.{tracking.TAG_STAGE}"] if f"tags.{tracking.TAG_STAGE}" in runs.columns else pd.Series(dtype=str)
    search = runs[stage.eq(tracking.STAGE_SEARCH)] if len(stage) else runs.iloc[0:0]
    lacking = search[_missing(search, "device_hours") | _missing(search, "epochs")]
    histories = metric_histories(uri, list(lacking["run_id"]), ["epoch_time_s"]) if len(lacking) else None
    audit = budget_mod.budget_audit(runs, histories, budget_mod.load_studies(uri, runs))
    timings["budget audit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    uris = dict(zip(runs["run_id"], runs["artifact_uri"])) if "artifact_uri" in runs.columns else {}
    loader = MlflowPerCaseLoader(uri, artifact_uris=uris)
    val_loader = MlflowPerCaseLoader(uri, artifact=tracking.PER_CASE_VAL_ARTIFACT, artifact_uris=uris)
    finished = finished_runs(runs) if not runs.empty else pd.DataFrame()
    cases = case_tables(runs, finished, loader, val_loader) if not finished.empty else None
    board = leaderboard(runs, reference=reference, per_case_loader=loader if reference else False,
                        budget=audit, budget_tolerance=budget_tolerance, cases=cases)
    timings["leaderboard + paired tests (reads the per-case files)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ranks = rankings_from_cases(cases, n_boot=n_boot, seed=seed) if cases is not None else None
    timings["rankings + bootstrap"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    curves = _curves(uri, finished, curve_keys)
    timings["learning curves"] = time.perf_counter() - t0
    return ReportData(
        tracking_uri=uri, experiments=as_list(experiments), reference=reference, board=board,
        tables=split_tables(board), cases=cases, ranks=ranks, audit=audit, curves=curves, n_boot=n_boot,
        seed=seed, budget_tolerance=budget_tolerance, timings=timings, runs_read=len(runs),
    )


def _missing(frame: pd.DataFrame, metric: str) -> pd.Series:
    col = f"metrics.{metric}"
    return frame[col].isna() if col in frame.columns else pd.Series(True, index=frame.index)


def _curves(uri: str, finished: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The final runs' per-epoch histories of ``keys``, with each run's dataset, protocol, model, seed, fold."""
    if finished.empty:
        return pd.DataFrame(columns=["run_id", "key", "step", "value", "dataset", "protocol", "model", "seed", "fold"])
    hist = metric_histories(uri, list(finished["run_id"]), list(keys))
    meta = finished[["run_id", "dataset", "protocol", "model", "seed", "fold"]]
    return hist.merge(meta, on="run_id", how="inner")
