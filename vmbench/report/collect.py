"""Everything a report shows, read from an MLflow store once: runs, tables, ranks, budgets, curves."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from vmbench import tracking
from vmbench.environment import temporary_env
from vmbench.leaderboard import budget as budget_mod
from vmbench.leaderboard.board import case_tables, finished_runs, leaderboard
from vmbench.leaderboard.cases import CaseTables
from vmbench.leaderboard.columns import MEASURED
from vmbench.leaderboard.history import metric_histories
from vmbench.leaderboard.rankings import Rankings, rankings_from_cases
from vmbench.leaderboard.store import MlflowPerCaseLoader, as_list, load_runs
from vmbench.leaderboard.tables import Table, split_tables
from vmbench.report.search_front import SearchFront, search_fronts

log = logging.getLogger(__name__)

CURVE_KEYS = ("val_dsc", "train_loss")


@dataclass
class Example:
    """One test case of the examples panel: why it was chosen, and per model its overlay PNG and score."""

    label: str  # "best", "median", "worst" (of the reference model's per-case DSC)
    case: str
    images: dict[str, bytes]  # model -> PNG (image with truth green, prediction red, overlap yellow)
    scores: dict[str, float]  # model -> per-case DSC (fraction, mean over the model's runs)


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
    examples: dict[tuple[str, str], tuple[str, list[Example]]] = field(default_factory=dict)  # -> (chosen by, cases)
    search_fronts: list[SearchFront] = field(default_factory=list)  # multi-objective sweeps' search trials

    def measured(self) -> pd.DataFrame:
        """Measured rows on the runs' own test split (transfer rows, scored on other data, left out)."""
        if self.board.empty:
            return self.board
        own = self.board["scored_on"].fillna("").eq("") if "scored_on" in self.board.columns else True
        return self.board[(self.board["kind"] == MEASURED) & own]


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
    # A store with no sweep yet: its single `vmbench train` runs, as the leaderboard shows them (not tuned).
    tested = tracking.STAGE_FINAL if stage.eq(tracking.STAGE_FINAL).any() or not stage.eq(tracking.STAGE_SINGLE).any() \
        else tracking.STAGE_SINGLE
    finished = finished_runs(runs, tested) if not runs.empty else pd.DataFrame()
    cases = case_tables(runs, finished, loader, val_loader) if not finished.empty else None
    board = leaderboard(runs, reference=reference, per_case_loader=loader if reference else False,
                        budget=audit, budget_tolerance=budget_tolerance, cases=cases, stage=tested)
    timings["leaderboard + paired tests (reads the per-case files)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ranks = rankings_from_cases(cases, n_boot=n_boot, seed=seed) if cases is not None else None
    timings["rankings + bootstrap"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    curves = _curves(uri, finished, curve_keys)
    timings["learning curves"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    examples = _examples(uri, finished, cases, reference) if cases is not None else {}
    timings["example segmentations"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fronts = search_fronts(uri, runs) if not runs.empty else []
    timings["search Pareto fronts"] = time.perf_counter() - t0
    return ReportData(
        tracking_uri=uri, experiments=as_list(experiments), reference=reference, board=board,
        tables=split_tables(board), cases=cases, ranks=ranks, audit=audit, curves=curves, n_boot=n_boot,
        seed=seed, budget_tolerance=budget_tolerance, timings=timings, runs_read=len(runs), examples=examples,
        search_fronts=fronts,
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


OVERLAY_DIR = "overlays/test"  # where engine.record logs each final or single run's test overlays


def _overlay_names(client, run_id: str) -> dict[str, str]:
    """Case id -> artifact path of the run's test overlays (``<id>.png``; ``<id>_z<slice>.png`` for volumes)."""
    out = {}
    for info in client.list_artifacts(run_id, OVERLAY_DIR):
        stem = info.path.rsplit("/", 1)[-1].removesuffix(".png")
        out[re.sub(r"_z\d+$", "", stem)] = info.path
    return out


def _examples(uri: str, finished: pd.DataFrame, cases: CaseTables, reference: str | None) -> dict:
    """Per (dataset, protocol): the test cases every model drew an overlay of, the reference model's best,
    median and worst by per-case DSC, with each model's overlay (from its first run by seed) and score."""
    import tempfile
    from pathlib import Path

    from mlflow.artifacts import download_artifacts

    client = tracking.client(uri)
    out: dict = {}
    for (dataset, protocol), rows in finished.groupby(["dataset", "protocol"], sort=True):
        table = cases.table(dataset, protocol)
        models = sorted(rows["model"].unique())
        first = {m: rows[rows["model"] == m].sort_values(["seed", "fold"])["run_id"].iloc[0] for m in models}
        names = {m: _overlay_names(client, run) for m, run in first.items()}
        chooser = reference if reference in models else models[0]
        if table.scores.empty or chooser not in table.scores.columns:
            continue
        common = set.intersection(*(set(n) for n in names.values())) & set(table.scores[chooser].dropna().index)
        if not common:
            continue
        ranked = table.scores.loc[sorted(common), chooser].sort_values(ascending=False, kind="stable")
        picks = {}  # label -> case; with fewer than 3 cases a case is shown once, under its first label
        for label, case in (("best", ranked.index[0]), ("median", ranked.index[len(ranked) // 2]),
                            ("worst", ranked.index[-1])):
            if case not in picks.values():
                picks[label] = case
        examples = []
        # No progress bar per image on the terminal of `vmbench report` or `vmbench sweep`.
        with tempfile.TemporaryDirectory() as tmp, temporary_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
            for label, case in picks.items():
                images = {m: Path(download_artifacts(run_id=first[m], artifact_path=names[m][case], dst_path=tmp,
                                                     tracking_uri=uri)).read_bytes() for m in models}
                scores = {m: float(table.scores.at[case, m]) for m in models if m in table.scores.columns}
                examples.append(Example(label, str(case), images, scores))
        out[(dataset, protocol)] = (chooser, examples)
    return out
