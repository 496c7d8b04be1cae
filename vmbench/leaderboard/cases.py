"""Per-case score tables (cases x models) for the paired tests and the rankings.

A final run logs one row per test case (ISIC: per image; Synapse: per case and organ) in
``eval/per_case.csv``. A model's score on a case is averaged over its runs:

* ``test`` split: over the seeds (and, under protocol ``cv``, over the folds and seeds: every
  fold's model is scored on the same untouched test cases);
* ``cv-val`` split (protocol ``cv`` only): the pooled cross-validation cases. Each case of the
  training pool is validated by exactly one fold (``eval/val/per_case.csv`` of that fold's run);
  for each seed the folds' tables are put together, then each case is averaged over seeds.

Synapse cases are volumes: the score of a case is the mean over its organs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from vmbench.errors import DataError
from vmbench.leaderboard.columns import KEYS
from vmbench.protocols import CV

PerCaseLoader = Callable[[str], "pd.DataFrame | None"]

SPLIT_TEST, SPLIT_CV_VAL = "test", "cv-val"
SPLIT_TEXT = {
    SPLIT_TEST: "test split",
    SPLIT_CV_VAL: "cross-validation pool (each training-pool case scored by the one fold that held it out)",
}
# Per-case columns the tables can rank on, and whether higher is better.
CASE_METRICS = {"dice": True, "iou": True, "hd95": False, "dice_strict": True, "hd95_strict": False}


def per_case_scores(frame: pd.DataFrame, column: str = "dice") -> pd.Series:
    """Per-case ``column`` indexed by case id: ISIC one row per image; Synapse the mean over organs."""
    if "id" not in frame.columns or column not in frame.columns:
        raise DataError(f"per-case table has no id/{column} columns (columns: {list(frame.columns)})")
    ids = frame["id"].astype(str)
    values = pd.to_numeric(frame[column], errors="coerce")
    if ids.is_unique:  # one row per case (ISIC): no grouping needed
        return pd.Series(values.to_numpy(), index=pd.Index(ids, name="id"), name=column).sort_index()
    return values.groupby(ids).mean()


@dataclass
class CaseTable:
    """One (dataset, protocol, split): per-case scores of every model with per-case files."""

    dataset: str
    protocol: str
    split: str
    metric: str
    scores: pd.DataFrame  # index: case id; columns: models; NaN where a model lacks the case
    notes: dict[str, str] = field(default_factory=dict)  # model -> what is missing or pooled
    runs: dict[str, str] = field(default_factory=dict)  # model -> "3 seeds" / "5 folds x 2 seeds"

    @property
    def higher_is_better(self) -> bool:
        return CASE_METRICS.get(self.metric, True)

    def complete(self) -> pd.DataFrame:
        """The cases every model of the table was scored on (what rankings need)."""
        return self.scores.dropna(axis=0, how="any")


class CaseTables:
    """Per-case tables of the finished runs, each run's CSV loaded once (through the loaders' caches).

    ``finished``: one row per finished run with ``run_id``, the key columns and ``seed`` (and
    ``fold`` under protocol cv). ``loader`` reads a run's test per-case table; ``val_loader``
    its validation per-case table (protocol cv).
    """

    def __init__(self, finished: pd.DataFrame, loader: PerCaseLoader, val_loader: PerCaseLoader | None = None,
                 metric: str = "dice"):
        self.finished = finished
        self.loader, self.val_loader, self.metric = loader, val_loader, metric
        self.groups = finished.groupby(KEYS, sort=True).groups
        self._cache: dict[tuple, tuple[pd.Series | None, str]] = {}

    @staticmethod
    def splits(protocol: str) -> list[str]:
        return [SPLIT_TEST, SPLIT_CV_VAL] if protocol == CV else [SPLIT_TEST]

    def describe_runs(self, key: tuple) -> str:
        runs = self.finished.loc[self.groups[key]]
        seeds = runs["seed"].nunique()
        if key[1] == CV and "fold" in runs.columns and runs["fold"].notna().any():
            return f"{runs['fold'].nunique()} folds x {seeds} seeds"
        return f"{seeds} seed{'s' if seeds != 1 else ''}"

    def model_scores(self, key: tuple, split: str = SPLIT_TEST) -> tuple[pd.Series | None, str]:
        """Per-case score of one (dataset, protocol, model) on ``split`` (NaN-free index), and a note."""
        if (key, split) not in self._cache:
            if key not in self.groups:
                result: tuple[pd.Series | None, str] = (None, "no finished runs")
            elif split == SPLIT_CV_VAL:
                result = self._pooled_validation(key)
            else:
                result = self._averaged(key)
            self._cache[(key, split)] = result
        return self._cache[(key, split)]

    def _averaged(self, key: tuple) -> tuple[pd.Series | None, str]:
        ids = list(self.finished.loc[self.groups[key], "run_id"])
        series = [per_case_scores(f, self.metric) for f in map(self.loader, ids) if f is not None and not f.empty]
        missing = len(ids) - len(series)
        note = f"per-case CSV missing for {missing} of {len(ids)} runs" if missing else ""
        if not series:
            return None, note or "no per-case CSV"
        return pd.concat(series, axis=1).mean(axis=1, skipna=True).dropna(), note

    def _pooled_validation(self, key: tuple) -> tuple[pd.Series | None, str]:
        """Each seed's folds put together (each case once), then each case averaged over seeds."""
        if self.val_loader is None:
            return None, "no validation per-case loader"
        runs = self.finished.loc[self.groups[key]]
        notes, per_seed, missing, repeated = [], [], 0, 0
        for _, seed_runs in runs.groupby("seed", sort=True, dropna=False):
            parts = []
            for run_id in seed_runs["run_id"]:
                frame = self.val_loader(run_id)
                if frame is None or frame.empty:
                    missing += 1
                else:
                    parts.append(per_case_scores(frame, self.metric))
            if parts:
                pooled = pd.concat(parts)
                repeated += int(pooled.index.duplicated().sum())
                per_seed.append(pooled.groupby(level=0).mean())
        if missing:
            notes.append(f"validation per-case CSV missing for {missing} of {len(runs)} runs")
        if repeated:
            notes.append(f"{repeated} validation cases scored by more than one fold of a seed (averaged)")
        if not per_seed:
            return None, "; ".join(notes) or "no validation per-case CSV"
        return pd.concat(per_seed, axis=1).mean(axis=1, skipna=True).dropna(), "; ".join(notes)

    def table(self, dataset: str, protocol: str, split: str = SPLIT_TEST) -> CaseTable:
        """Every model of (dataset, protocol) with per-case scores on ``split``, as cases x models."""
        models = sorted(m for (d, p, m) in self.groups if d == dataset and p == protocol)
        columns, notes, runs = {}, {}, {}
        for model in models:
            key = (dataset, protocol, model)
            scores, note = self.model_scores(key, split)
            runs[model] = self.describe_runs(key)
            if note:
                notes[model] = note
            if scores is not None:
                columns[model] = scores
        frame = pd.DataFrame(columns).sort_index() if columns else pd.DataFrame()
        return CaseTable(dataset, protocol, split, self.metric, frame, notes, runs)
