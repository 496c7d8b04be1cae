"""The search's own Pareto front: the search trials of multi-objective sweeps on their objectives.

A sweep with several objectives (``metric: [val_dsc, latency_ms]``) records them on its parent run
(``vmbench.objectives``, :func:`vmbench.tracking.objectives_tag`) and tags the search runs of each
study's Pareto-optimal trials ``vmbench.pareto = true``; a search run's objective values are the
last ones it logged, the values the driver compared. A sweep started before the objectives tag is
read from the plan on its parent run (``sweep_plan.json``), and only when some of its search runs
carry the Pareto tag (so single-objective sweeps cost no artifact download).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vmbench import tracking
from vmbench.environment import temporary_env

log = logging.getLogger(__name__)

PLAN_ARTIFACT = "sweep_plan.json"  # written by tracking.open_sweep_run
# The plan's objective text (search_space.SweepSpec._objective_text): "a (max), b (min) together (Pareto front".
_PLAN_OBJECTIVES = re.compile(r"optimise (.+?) together \(Pareto front")
_PLAN_PAIR = re.compile(r"([\w.-]+) \((max|min)\)")


@dataclass
class SearchFront:
    """The search trials of one (dataset, protocol) under one set of objectives.

    ``points``: one row per search run with every objective logged: ``run_id``, ``sweep``,
    ``model``, ``series`` (the legend's name: the model, with its sweep when several sweeps share
    the figure), ``pareto`` (tagged Pareto-optimal in its study) and one column per objective.
    """

    dataset: str
    protocol: str
    objectives: tuple[str, ...]
    modes: tuple[str, ...]
    points: pd.DataFrame

    @property
    def n_pareto(self) -> int:
        return int(self.points["pareto"].sum())


def _tag(runs: pd.DataFrame, name: str) -> pd.Series:
    col = f"tags.{name}"
    return runs[col] if col in runs.columns else pd.Series(pd.NA, index=runs.index, dtype="object")


def objectives_from_plan(plan: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(objectives, modes) named by a multi-objective sweep's plan text; ((), ()) for one objective."""
    found = _PLAN_OBJECTIVES.search(plan or "")
    pairs = _PLAN_PAIR.findall(found.group(1)) if found else []
    return tuple(m for m, _ in pairs), tuple(d for _, d in pairs)


def _plan_objectives(client, parent: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="vmbench-plan-") as tmp, \
            temporary_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
        try:
            path = client.download_artifacts(parent, PLAN_ARTIFACT, tmp)
            return objectives_from_plan(json.loads(Path(path).read_text()).get("plan", ""))
        except (MlflowException, OSError, json.JSONDecodeError, AttributeError) as err:
            log.info("sweep run %s: no objectives tag and no readable %s (%s)", parent, PLAN_ARTIFACT,
                     type(err).__name__)
            return (), ()


def sweep_objectives(uri: str, search: pd.DataFrame) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Parent run id -> (objectives, modes) of each sweep that ``search`` (search runs) belongs to."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(uri)
    parents = _tag(search, tracking.TAG_PARENT)
    tagged = set(parents[_tag(search, tracking.TAG_PARETO).eq("true")].dropna())
    out = {}
    for parent in parents.dropna().unique():
        try:
            tags = client.get_run(parent).data.tags
        except MlflowException:  # the parent run was deleted: its trials stay unplotted
            continue
        found = tracking.parse_objectives_tag(tags.get(tracking.TAG_OBJECTIVES))
        if not found[0] and parent in tagged:  # a sweep from before the tag
            found = _plan_objectives(client, parent)
        out[parent] = found
    return out


def search_fronts(uri: str, runs: pd.DataFrame) -> list[SearchFront]:
    """Per (dataset, protocol, objectives) of the multi-objective sweeps in ``runs`` (load_runs of
    every stage), their search trials that finished with every objective logged."""
    search = runs[_tag(runs, tracking.TAG_STAGE).eq(tracking.STAGE_SEARCH)]
    if search.empty:
        return []
    objectives = {p: o for p, o in sweep_objectives(uri, search).items() if len(o[0]) > 1}
    fronts, frames = [], []
    for parent, (metrics, modes) in objectives.items():
        rows = search[_tag(search, tracking.TAG_PARENT).eq(parent) & search["status"].eq("FINISHED")]
        columns = [f"metrics.{m}" for m in metrics]
        if rows.empty or any(c not in rows.columns for c in columns):
            continue
        values = rows[columns].astype("float64").set_axis(list(metrics), axis=1)
        frame = pd.DataFrame({
            "run_id": rows["run_id"], "sweep": _tag(rows, tracking.TAG_SWEEP).fillna(""),
            "model": _tag(rows, tracking.TAG_MODEL), "dataset": _tag(rows, tracking.TAG_DATASET),
            "protocol": _tag(rows, tracking.TAG_PROTOCOL), "pareto": _tag(rows, tracking.TAG_PARETO).eq("true"),
        }).join(values)
        frame = frame[np.isfinite(values.to_numpy()).all(axis=1) & frame["model"].notna()]
        frames.append((metrics, modes, frame))
    keys = {(dataset, protocol, m, d) for m, d, f in frames for dataset, protocol in zip(f["dataset"], f["protocol"])}
    for dataset, protocol, metrics, modes in sorted(keys):
        parts = [f[(f["dataset"] == dataset) & (f["protocol"] == protocol)] for m, d, f in frames
                 if (m, d) == (metrics, modes)]
        points = pd.concat(parts, ignore_index=True).sort_values(["model", "sweep", "run_id"], kind="stable")
        several = points["sweep"].nunique() > 1
        points["series"] = points["model"] + (" (" + points["sweep"] + ")" if several else "")
        fronts.append(SearchFront(dataset, protocol, metrics, modes, points.reset_index(drop=True)))
    return fronts
