"""The equal-budget audit: what each model's tuning cost, and how far its best configuration is from its recipe.

*nnU-Net Revisited* (Isensee et al., MICCAI 2024, arXiv 2404.09556) names neglected compute as a
pitfall of segmentation benchmarks: a model searched longer can win by its budget alone. Per
(dataset, protocol, model) :func:`budget_audit` counts

* search trials run, pruned by ASHA or the Wilcoxon pruner (``vmbench.outcome = pruned``) and failed;
* epochs trained in search and in the final runs;
* device-hours of search and final runs. Final runs log ``device_hours`` and ``epochs``. Search
  trials that log ``epochs`` / ``train_time_s`` / ``device_hours`` at their end are read
  directly; otherwise epochs are the steps of their ``epoch_time_s`` history and seconds its sum
  (:mod:`vmbench.leaderboard.history`), converted to device-hours with the devices per trial of
  the same study's final runs (``device_hours / train_time_s``), or one device when none say;
* the distance of the best configuration from the published recipe
  (``vmbench.model_info(model).recipe``), per searched key: ``|log10(best / recipe)|`` (decades)
  for positive scale parameters (learning rate, weight decay), ``|best - recipe| / |recipe|``
  otherwise; the largest is shown. The best configuration is the ``best`` of the sweep's
  ``studies/<dataset>__<model>.json`` (on the sweep's parent run), else the searched keys' values
  in the final runs' params.

:func:`budget_flags` says which tables compare models whose budgets differ by more than a tolerance.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from vmbench import tracking
from vmbench.environment import temporary_env
from vmbench.errors import UnknownNameError

log = logging.getLogger(__name__)

KEYS = ["dataset", "protocol", "model"]
# Searched keys whose last part names a positive scale parameter: distances in decades.
LOG_SCALE_NAMES = ("lr", "weight_decay", "eta_min", "min_lr", "eps")
# Config sections whose recipe entry has another name (the registry's recipes follow the papers' code).
RECIPE_SECTIONS = {"optim": "optimizer"}
RECIPE_NAMES = {"t_max": "T_max"}
SEARCH_PARAM = "params.search."


def _tag(runs: pd.DataFrame, name: str) -> pd.Series:
    col = f"tags.{name}"
    return runs[col] if col in runs.columns else pd.Series(pd.NA, index=runs.index, dtype="object")


def _metric(runs: pd.DataFrame, name: str) -> pd.Series:
    col = f"metrics.{name}"
    return runs[col].astype("float64") if col in runs.columns else pd.Series(np.nan, index=runs.index)


def budget_audit(runs: pd.DataFrame, histories: pd.DataFrame | None = None,
                 studies: Mapping[tuple[str, str], dict] | None = None) -> pd.DataFrame:
    """One row per (dataset, protocol, model): search and final cost, and the distance from the recipe.

    ``runs``: :func:`vmbench.leaderboard.load_runs` of every stage, with ``params=True``.
    ``histories``: :func:`vmbench.leaderboard.history.metric_histories` of the search trials'
    ``epoch_time_s`` (needed only for trials that do not log their own totals). ``studies``:
    (sweep, study) -> the sweep's study JSON (:func:`load_studies`).
    """
    trials = runs[_tag(runs, tracking.TAG_KIND).fillna("trial").eq("trial") & _tag(runs, tracking.TAG_MODEL).notna()]
    keys = pd.DataFrame({
        "dataset": _tag(trials, tracking.TAG_DATASET), "protocol": _tag(trials, tracking.TAG_PROTOCOL),
        "model": _tag(trials, tracking.TAG_MODEL),
    })
    stage = _tag(trials, tracking.TAG_STAGE)
    rows = []
    for key, index in keys.groupby(KEYS, sort=True).groups.items():
        group = trials.loc[index]
        search, final = group[stage.loc[index].eq(tracking.STAGE_SEARCH)], group[stage.loc[index].eq(tracking.STAGE_FINAL)]
        row: dict[str, Any] = dict(zip(KEYS, key))
        row.update(_search_counts(search))
        row.update(_final_cost(final))
        row.update(_search_cost(search, histories, row.pop("_devices_per_trial")))
        row["device_hours_total"] = np.nansum([row["search_device_hours"], row["final_device_hours"]])
        row.update(_recipe_distance(key, search, final, studies or {}))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*KEYS, *AUDIT_COLUMNS]) if rows else pd.DataFrame(columns=[*KEYS, *AUDIT_COLUMNS])


AUDIT_COLUMNS = [
    "trials", "pruned", "failed", "search_epochs", "search_device_hours", "final_runs", "final_epochs",
    "final_device_hours", "device_hours_total", "sweeps", "recipe_distance", "recipe_key", "recipe_text",
    "best_source", "notes",
]


def _search_counts(search: pd.DataFrame) -> dict[str, Any]:
    outcome, status = _tag(search, tracking.TAG_OUTCOME), search["status"]
    failed = status.isin(["FAILED", "KILLED"]) | outcome.eq(tracking.FAILED)
    return {
        "trials": len(search),
        "pruned": int((outcome.eq(tracking.PRUNED) & ~failed).sum()),
        "failed": int(failed.sum()),
        "sweeps": int(_tag(search, tracking.TAG_SWEEP).nunique()),
    }


def _final_cost(final: pd.DataFrame) -> dict[str, Any]:
    hours, seconds = _metric(final, "device_hours"), _metric(final, "train_time_s")
    ratio = (hours / (seconds / 3600.0)).replace([np.inf, -np.inf], np.nan).dropna()
    return {
        "final_runs": int(final["status"].eq("FINISHED").sum()),
        "final_epochs": float(_metric(final, "epochs").sum(min_count=1)),
        "final_device_hours": float(hours.sum(min_count=1)),
        "_devices_per_trial": float(ratio.median()) if len(ratio) else float("nan"),
    }


def _search_cost(search: pd.DataFrame, histories: pd.DataFrame | None, devices: float) -> dict[str, Any]:
    """Epochs and device-hours of the search trials: their own totals, else their epoch-time history."""
    from vmbench.leaderboard.history import epoch_costs

    notes = []
    epochs, seconds, hours = _metric(search, "epochs"), _metric(search, "train_time_s"), _metric(search, "device_hours")
    if histories is not None and (hours.isna() | epochs.isna()).any():
        by_run = epoch_costs(histories).reindex(search["run_id"])
        by_run.index = search.index
        epochs, seconds = epochs.fillna(by_run["epochs"].astype("float64")), seconds.fillna(by_run["seconds"].astype("float64"))
    if (hours.isna() & seconds.notna()).any():
        if math.isnan(devices):
            devices = 1.0
            notes.append("search device-hours assume one device per trial (no final run says how many)")
        hours = hours.fillna(seconds / 3600.0 * devices)
    unknown = int(hours.isna().sum())
    if unknown:
        notes.append(f"{unknown} of {len(search)} search trials logged no epoch times (their cost is not counted)")
    return {
        "search_epochs": float(epochs.sum()),
        "search_device_hours": float(hours.sum()),
        "notes": "; ".join(notes),
    }


def load_studies(tracking_uri: str, runs: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(sweep, study) -> the sweep's ``studies/<study>.json``, read from the parents of the final runs."""
    import mlflow
    from mlflow.exceptions import MlflowException

    final = runs[_tag(runs, tracking.TAG_STAGE).eq(tracking.STAGE_FINAL)]
    pairs = pd.DataFrame({
        "parent": _tag(final, tracking.TAG_PARENT), "sweep": _tag(final, tracking.TAG_SWEEP),
        "study": _tag(final, tracking.TAG_STUDY),
    }).dropna().drop_duplicates()
    client, out = mlflow.MlflowClient(tracking_uri=tracking_uri), {}
    with tempfile.TemporaryDirectory(prefix="vmbench-studies-") as tmp, \
            temporary_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
        for parent, sweep, study in pairs.itertuples(index=False):
            try:
                path = client.download_artifacts(parent, f"studies/{study}.json", tmp)
                out[(sweep, study)] = json.loads(Path(path).read_text())
            except (MlflowException, OSError, json.JSONDecodeError) as err:
                log.info("no studies/%s.json on sweep run %s (%s): best values from the final runs' params",
                         study, parent, type(err).__name__)
    return out


def _recipe_distance(key: tuple, search: pd.DataFrame, final: pd.DataFrame, studies: Mapping) -> dict[str, Any]:
    """The largest per-key distance of the best configuration from the registry's recipe."""
    none = {"recipe_distance": np.nan, "recipe_key": "", "recipe_text": "", "best_source": ""}
    searched = [c[len(SEARCH_PARAM):] for c in search.columns if c.startswith(SEARCH_PARAM) and search[c].notna().any()]
    if not searched:
        return {**none, "recipe_text": "no searched keys logged"}
    best, source = _best_values(search, final, searched, studies)
    recipe = _registry_recipe(key[2])
    if not best:
        return {**none, "recipe_text": "best configuration unknown (no study JSON, no final runs)"}
    distances = []
    for name, value in best.items():
        published = lookup_recipe(recipe, name, key[0])
        if published is not None and _is_number(value):
            distances.append((name, float(value), published, *recipe_distance(name, float(value), published)))
    if not distances:
        return {**none, "best_source": source, "recipe_text": "no searched key has a numeric value in the recipe"}
    name, value, published, distance, unit = max(distances, key=lambda d: d[3])
    text = f"{name}: {value:.3g} vs recipe {published:.3g} ({distance:.2f} {unit})"
    return {"recipe_distance": distance, "recipe_key": name, "recipe_text": text, "best_source": source}


def _best_values(search, final, searched, studies) -> tuple[dict[str, Any], str]:
    sweeps, study_tags = _tag(final, tracking.TAG_SWEEP).dropna(), _tag(final, tracking.TAG_STUDY).dropna()
    for sweep, study in zip(sweeps, study_tags):
        best = (studies.get((sweep, study)) or {}).get("best")
        if isinstance(best, dict) and best:
            return {k: v for k, v in best.items() if k in searched or not searched}, "study JSON"
    values = {}
    for name in searched:
        col = f"params.{name}"
        if col in final.columns and final[col].notna().any():
            values[name] = final[col].dropna().iloc[0]
    return values, ("final runs' params" if values else "")


def _registry_recipe(model: str) -> dict:
    import vmbench

    try:
        return dict(vmbench.model_info(model).recipe or {})
    except UnknownNameError:
        return {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(float(value))


def lookup_recipe(recipe: Mapping, key: str, dataset: str | None = None) -> float | None:
    """The recipe's numeric value of a dotted config key (``optim.lr`` -> ``recipe['optimizer']['lr']``).

    Looked up in the dataset's own section first (``recipe['datasets'][dataset]``), then at the
    top level; ``model.overrides.x`` is also looked up as ``x``. None when absent or not a number.
    """
    parts = key.split(".")
    if parts[:2] == ["model", "overrides"]:
        parts = parts[2:]
    parts = [RECIPE_SECTIONS.get(parts[0], parts[0]), *parts[1:]] if parts else parts
    names = [parts, [RECIPE_NAMES.get(p, p) for p in parts], parts[-1:], [RECIPE_NAMES.get(parts[-1], parts[-1])]]
    sections = [((recipe.get("datasets") or {}).get(dataset) or {}) if dataset else {}, recipe]
    for section in sections:
        for path in names:
            value: Any = section
            for part in path:
                value = value.get(part) if isinstance(value, Mapping) else None
            if _is_number(value):
                return float(value)
    return None


def recipe_distance(key: str, best: float, published: float) -> tuple[float, str]:
    """(distance, unit): decades for positive scale parameters, relative difference otherwise."""
    if key.split(".")[-1] in LOG_SCALE_NAMES and best > 0 and published > 0:
        return abs(math.log10(best / published)), "decades"
    if published == 0:
        return abs(best), "absolute"
    return abs(best - published) / abs(published), "relative"


def budget_flags(audit: pd.DataFrame, tolerance: float = 0.10) -> dict[tuple[str, str], list[str]]:
    """(dataset, protocol) -> notes on unequal budgets: search trials or device-hours whose spread
    exceeds ``tolerance`` of the largest."""
    flags: dict[tuple[str, str], list[str]] = {}
    for (dataset, protocol), group in audit.groupby(["dataset", "protocol"], sort=True):
        if len(group) < 2:
            continue
        notes = []
        for column, label in (("trials", "search trials"), ("device_hours_total", "device-hours (search + final)")):
            values = group.set_index("model")[column].astype("float64").dropna()
            if len(values) >= 2 and values.max() > 0 and (values.max() - values.min()) > tolerance * values.max():
                shown = ", ".join(f"{m} {v:.4g}" for m, v in values.items())
                notes.append(f"{label}: {shown}")
        if notes:
            flags[(dataset, protocol)] = [
                f"WARNING: unequal budgets (spread above {tolerance:.0%} of the largest): " + "; ".join(notes)
                + ". A model tuned with more trials or compute can win by its budget alone."
            ]
    return flags


def audit_store(tracking_uri: str | None = None, experiment=None, dataset=None, protocol=None, model=None) -> pd.DataFrame:
    """:func:`budget_audit` of the runs in a store (every stage; epoch-time histories read only for
    search trials that do not log their own totals)."""
    from vmbench.leaderboard.history import metric_histories
    from vmbench.leaderboard.store import load_runs

    runs = load_runs(tracking_uri, experiment=experiment, dataset=dataset, protocol=protocol, model=model,
                     stage="all", params=True)
    uri = runs.attrs["tracking_uri"]
    search = runs[_tag(runs, tracking.TAG_STAGE).eq(tracking.STAGE_SEARCH)]
    lacking = search[_metric(search, "device_hours").isna() | _metric(search, "epochs").isna()]
    histories = metric_histories(uri, list(lacking["run_id"]), ["epoch_time_s"]) if len(lacking) else None
    return budget_audit(runs, histories, load_studies(uri, runs))
