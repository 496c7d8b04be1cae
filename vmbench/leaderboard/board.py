"""The leaderboard frame: one row per (dataset, protocol, model) of measured runs, plus published rows.

:func:`leaderboard` runs these stages:

1. :func:`select_runs`: the trial runs of the stage whose metrics are shown, as key columns;
2. :func:`choose_metrics`: the metric keys per dataset (its registry entry);
3. :func:`measured_rows`: status counts, statistics over seeds and cost per group;
4. :func:`vmbench.leaderboard.paired.paired_tests` against the reference model and of each model
   against its ablation twins (Holm-corrected together per table), on the per-case tables of
   :func:`case_tables`; a twin's acting parameters (:func:`acting_parameters`);
5. the budget flags of :func:`vmbench.leaderboard.budget.budget_flags` (when an audit is given);
6. :func:`vmbench.leaderboard.published.published_rows`, then ordering.

Protocol ``cv``: a row pools every fold and seed of a model's final runs (``n`` runs = folds x
seeds, ``folds`` and ``seeds`` columns); mean and std are over those runs, each scored on the
untouched test split, and the confidence interval is over seeds of the fold-averaged score (fold
models share training data: folds are not independent samples).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from vmbench import tracking
from vmbench.errors import ConfigError, UnknownNameError, few
from vmbench.leaderboard.columns import (
    COST_METRICS, COUNTS, KEYS, MEASURED, PRIMARY, PUBLISHED, dataset_metrics, registered_dataset,
)
from vmbench.leaderboard.budget import budget_flags
from vmbench.leaderboard.cases import CaseTables, PerCaseLoader
from vmbench.leaderboard.paired import ABLATION_COLUMNS, paired_tests, twin_of
from vmbench.leaderboard.published import published_rows
from vmbench.leaderboard.stats import group_summary
from vmbench.leaderboard.store import MlflowPerCaseLoader
from vmbench.leaderboard.transfer import own_dsc, tagged_runs, target_and_split, transfer_evaluations, transfer_loader
from vmbench.protocols import CV, metric_column, metric_unit

_FAILED = ("FAILED", "KILLED")
_FINISHED = "FINISHED"
# test_* metrics are logged by final runs only (vmbench.tracking): a search trial selected along
# with them (stage 'all') has nothing to show and would only inflate the counts.
PREFIX_STAGE = {"test_": "final"}
# The stages whose runs are scored on the test split (a sweep's final runs, `vmbench train` runs).
TESTED_STAGES = (tracking.STAGE_FINAL, tracking.STAGE_SINGLE)


@dataclass
class Selection:
    """The runs that a leaderboard counts (``rows``: key columns, index of ``runs``)."""

    rows: pd.DataFrame
    # (dataset, protocol) -> number of runs of another stage left out (no metrics under the prefix)
    set_aside: dict[tuple[str, str], int] = field(default_factory=dict)
    set_aside_stage: str | None = None


@dataclass
class MetricChoice:
    keys: list[str]  # every key aggregated, in column order
    evaluations: dict[str, str]  # dataset -> evaluation kind (inferred for datasets not registered)


def leaderboard(
    runs: pd.DataFrame,
    reference: str | None = "vmunet",
    metrics: Sequence[str] | None = None,
    with_published: bool = True,
    per_case_loader: Callable[[str], pd.DataFrame | None] | None | bool = None,
    *,
    stage: str | None = "final",
    prefix: str | None = None,
    published_models: Sequence[str] | None = None,
    published_protocols: Sequence[str] | None = None,
    budget: pd.DataFrame | None = None,
    budget_tolerance: float = 0.10,
    cases: CaseTables | None = None,
    transfer: bool = True,
) -> pd.DataFrame:
    """One row per (dataset, protocol, model) of measured runs, plus published rows.

    ``runs``: :func:`load_runs` output (or ``mlflow.search_runs``'s, same columns). Only FINISHED
    runs enter the statistics; ``failed`` counts FAILED/KILLED and ``running`` the others.
    Search trials that ASHA stopped early (FINISHED, ``vmbench.outcome = pruned``) are counted in
    ``pruned`` and left out of the statistics: their metrics come from fewer epochs. With
    ``stage=None`` (every stage) and ``test_*`` metrics, only final runs are counted: search trials
    log no test metrics (the number left out is a note of each table).

    Per metric key ``k`` (``metric_column(k)`` = ``dsc_pct``, ``hd95_vox`` ...): ``_mean``,
    ``_std`` (sample, ddof=1), ``_ci_lo``/``_ci_hi`` (95 % t-interval over seeds; NaN with one
    seed), in display units (percent for fractions, voxels for HD95). ``metrics``: the keys
    to aggregate (default: each dataset's registered set, per-class HD95 included).

    Paired test (``reference`` given, ``per_case_loader`` a callable ``run_id -> per-case
    DataFrame``; ``None`` uses MLflow when ``runs.attrs`` has a tracking URI, ``False`` skips):
    Wilcoxon signed-rank, two-sided, of per-case DSC (seed- and fold-averaged, paired by case id)
    of each model against the reference in the same dataset and protocol: ``wilcoxon_p`` (raw),
    ``wilcoxon_p_holm`` (Holm-adjusted over the table's comparisons), ``wilcoxon_pairs``,
    ``dsc_diff_pp`` (mean difference in percentage points) and ``note``. A twin ``M~no-ssm`` /
    ``M~no-mamba`` in the same table as ``M``: its row's ``ablation_*`` columns hold the test of
    the twin against ``M`` (``ablation_diff_pp`` = twin − M), Holm-corrected in the same family
    (``holm_m``: its size), and ``n_params_acting`` its parameters minus those the ablation silences.

    ``cases``: per-case tables already built over the same finished runs (:func:`case_tables`),
    reused instead of reading the files again (the report shares them with its rankings).

    ``transfer``: add the rows of the runs' transfer evaluations (:mod:`vmbench.leaderboard.transfer`:
    ``scored_on`` names the dataset they were scored on; empty on the runs' own test split).

    ``budget``: a :func:`vmbench.leaderboard.budget.budget_audit` frame; tables whose models'
    search trials or device-hours differ by more than ``budget_tolerance`` (relative to the
    largest) get a note.

    Published rows (``kind == 'published'``, ``source`` set, ``protocol`` from the registry,
    normally 'paper') come from ``vmbench.model_info(m).published`` for the datasets measured.
    ``published_protocols`` (the ``--protocol`` filter): published rows of a protocol vmbench
    does not run (tables of their own) are kept only when it is listed.
    """
    if prefix is None:
        prefix = "test_" if stage in (*TESTED_STAGES, None) else "val_"
    selection = select_runs(runs, stage, prefix)
    attrs = dict(stage=stage, prefix=prefix, set_aside=selection.set_aside, set_aside_stage=selection.set_aside_stage)
    if selection.rows.empty:
        return _empty_frame(attrs)
    choice = choose_metrics(runs, selection.rows, prefix, metrics)
    out, finished = measured_rows(runs, selection.rows, choice, prefix)
    twins = out["model"].map(twin_of).notna()
    if (reference or twins.any()) and per_case_loader is not False:
        paired_tests(out, reference, cases if cases is not None else case_tables(runs, finished, per_case_loader))
    out.loc[twins, "n_params_acting"] = [acting_parameters(r["model"], r["dataset"], r["n_params"])
                                         for _, r in out[twins].iterrows()]
    out["scored_on"], out["scored_split"] = "", ""
    if transfer:
        out = pd.concat([out, *_transfer_rows(runs, out, reference, metrics, per_case_loader, stage)],
                        ignore_index=True)
    if budget is not None:
        attrs["budget_flags"] = budget_flags(budget, budget_tolerance)
        attrs["budget_tolerance"] = budget_tolerance
    if with_published:
        pub = published_rows(choice.evaluations, choice.keys, published_models, published_protocols)
        if not pub.empty:
            out = pd.concat([out, pub], ignore_index=True)
    for col in (*COUNTS, "seeds", "folds", "sweeps", "val_is_test_runs"):
        out[col] = out[col].astype("Int64")  # counts; missing (<NA>) on published rows
    for col in ("scored_on", "scored_split"):
        out[col] = out[col].fillna("")
    out = _order(out)
    out.attrs.update(
        attrs,
        reference=reference,
        metrics=choice.keys,
        tracking_uri=runs.attrs.get("tracking_uri"),
        description=runs.attrs.get("description"),
        explicit_metrics=bool(metrics),
        paired_test=bool(reference) and per_case_loader is not False,
    )
    return out


def _transfer_rows(runs: pd.DataFrame, own: pd.DataFrame, reference: str | None, metrics, per_case_loader,
                   stage: str | None) -> list[pd.DataFrame]:
    """The rows of each transfer evaluation of ``runs`` (a leaderboard of its ``eval_<name>_*``
    metrics, without published rows), with the models' own test DSC beside them."""
    frames = []
    for name in transfer_evaluations(runs):
        rows = leaderboard(tagged_runs(runs, name), reference, metrics, with_published=False,
                           per_case_loader=transfer_loader(per_case_loader, name, runs), stage=stage,
                           prefix=f"eval_{name}_", transfer=False)
        if rows.empty:
            continue
        rows["scored_on"], rows["scored_split"] = target_and_split(name)
        rows["own_dsc_pct_mean"] = own_dsc(rows, own)
        frames.append(rows)
    return frames


def select_runs(runs: pd.DataFrame, stage: str | None, prefix: str) -> Selection:
    """Key columns (dataset/protocol/model/seed/...) of the trial runs counted under ``stage``."""

    def tag(name: str) -> pd.Series:
        col = f"tags.{name}"
        return runs[col] if col in runs.columns else pd.Series(pd.NA, index=runs.index, dtype="object")

    run_stage = tag(tracking.TAG_STAGE)
    kind, model = tag(tracking.TAG_KIND), tag(tracking.TAG_MODEL)
    keep = (kind.isna() | (kind == "trial")) & model.notna()
    wanted = stage if stage and stage != "all" else None
    if wanted:
        keep &= run_stage.isna() | (run_stage == wanted)
    out = pd.DataFrame(
        {
            "run_id": runs["run_id"] if "run_id" in runs.columns else pd.Series(runs.index.astype(str), index=runs.index),
            "status": runs["status"] if "status" in runs.columns else _FINISHED,
            "dataset": tag(tracking.TAG_DATASET).fillna("(no dataset tag)"),
            "protocol": tag(tracking.TAG_PROTOCOL).fillna("(no protocol tag)"),
            "model": model,
            "seed": tag(tracking.TAG_SEED),
            "fold": tag(tracking.TAG_FOLD),
            "sweep": tag(tracking.TAG_SWEEP),
            "hardware": tag(tracking.TAG_HARDWARE),
            "val_is_test": tag(tracking.TAG_VAL_IS_TEST).astype("string").str.lower().eq("true").fillna(False),
            # ASHA-stopped search trials: counted apart, never averaged.
            "pruned": (run_stage.eq("search") & tag(tracking.TAG_OUTCOME).eq(tracking.PRUNED)).fillna(False).astype(bool),
        },
        index=runs.index,
    )[keep]
    only = PREFIX_STAGE.get(prefix) if wanted is None else None
    if only is None:
        return Selection(out)
    other = run_stage[keep].notna() & run_stage[keep].ne(only)
    set_aside = out[other].groupby(["dataset", "protocol"]).size()
    return Selection(out[~other], {k: int(v) for k, v in set_aside.items()}, only)


def choose_metrics(runs: pd.DataFrame, rows: pd.DataFrame, prefix: str, metrics: Sequence[str] | None) -> MetricChoice:
    """The metric keys to aggregate: ``metrics`` (checked against the runs), else each dataset's set."""
    logged = {c[len("metrics.") + len(prefix) :]: c for c in runs.columns if c.startswith(f"metrics.{prefix}")}
    present = runs.loc[rows.index, list(logged.values())].notna().groupby(rows["dataset"], sort=False).any()
    shown: list[str] = []
    extra: list[str] = []
    evaluations: dict[str, str] = {}
    for dataset in rows["dataset"].unique():
        keys = [k for k, col in logged.items() if dataset in present.index and present.at[dataset, col]]
        chosen = dataset_metrics(dataset, keys)
        evaluations[dataset] = chosen.evaluation
        shown += chosen.shown
        extra += chosen.extra
    if metrics:
        keys = list(dict.fromkeys(metrics))
        unknown = [k for k in keys if k not in logged]
        if unknown:
            raise ConfigError(
                f"--metrics {','.join(unknown)}: no selected run logs {', '.join(prefix + k for k in unknown)} "
                f"(logged: {few(sorted(logged), 12) or 'none'})"
            )
    else:
        keys = list(dict.fromkeys(shown + extra))
    return MetricChoice(keys, evaluations)


def _status_masks(rows: pd.DataFrame) -> dict[str, pd.Series]:
    pruned = rows["status"].eq(_FINISHED) & rows["pruned"]
    finished = rows["status"].eq(_FINISHED) & ~pruned
    failed = rows["status"].isin(_FAILED)
    return {"n": finished, "failed": failed, "running": ~finished & ~failed & ~pruned, "pruned": pruned}


def measured_rows(
    runs: pd.DataFrame, rows: pd.DataFrame, choice: MetricChoice, prefix: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The measured rows (counts, statistics, cost) and the finished runs they average."""
    masks = _status_masks(rows)
    counts = rows.assign(**{k: m.astype("int64") for k, m in masks.items()}).groupby(KEYS, sort=True)[list(COUNTS)].sum()
    fin = rows[masks["n"]]
    keys = choice.keys
    values = _display_values(runs, fin, keys, prefix)
    summary = group_summary(values, KEYS, keys, interval_values=_interval_values(values, fin, keys))
    meta = fin.groupby(KEYS, sort=True).agg(
        seeds=("seed", "nunique"), folds=("fold", "nunique"), sweeps=("sweep", "nunique"),
        val_is_test_runs=("val_is_test", "sum"),
    )
    hardware = (
        fin.dropna(subset=["hardware"])
        .groupby(KEYS, sort=True)["hardware"]
        .agg(lambda s: " | ".join(sorted(set(s))))
        .rename("hardware")
    )
    columns: dict[str, pd.Series] = {}
    for key in keys:
        c = metric_column(key)
        for stat in ("mean", "std", "ci_lo", "ci_hi"):
            columns[f"{c}_{stat}"] = getattr(summary, stat)[key]
    columns.update(_cost_columns(values.groupby(KEYS, sort=True)[[f"cost.{k}" for k in COST_METRICS]]))
    out = pd.concat([counts, meta, hardware, pd.DataFrame(columns)], axis=1).reset_index()
    out.insert(3, "kind", MEASURED)
    out.insert(4, "source", "vmbench runs")
    for col in ("seeds", "folds", "sweeps", "val_is_test_runs"):
        out[col] = out[col].fillna(0).astype("int64")
    out["evaluation"] = out["dataset"].map(choice.evaluations)
    out["wilcoxon_p"] = np.nan
    out["wilcoxon_p_holm"] = np.nan
    out["wilcoxon_pairs"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out["dsc_diff_pp"] = np.nan
    out["note"] = ""
    out["holm_m"] = pd.array([pd.NA] * len(out), dtype="Int64")
    for col in ABLATION_COLUMNS:
        out[col] = pd.array([pd.NA] * len(out), dtype="Int64") if col == "ablation_pairs" else (
            "" if col == "ablation_note" else None if col in ("ablation_of", "ablation") else np.nan)
    out["n_params_acting"] = np.nan
    out["best_model"] = None
    out["vs_best_p_holm"] = np.nan
    return out.copy(), fin


def case_tables(
    runs: pd.DataFrame,
    finished: pd.DataFrame,
    per_case_loader: PerCaseLoader | None,
    val_loader: PerCaseLoader | None = None,
    metric: str = "dice",
) -> CaseTables | None:
    """Per-case tables of the finished runs; ``None`` loaders read MLflow when ``runs`` knows its store.

    Returns None when no loader can be had (a frame without a tracking URI and no loader given).
    """
    uri = runs.attrs.get("tracking_uri")
    uris = dict(zip(runs["run_id"], runs["artifact_uri"])) if {"run_id", "artifact_uri"} <= set(runs.columns) else {}
    if per_case_loader is None and uri:
        per_case_loader = MlflowPerCaseLoader(uri, artifact_uris=uris)
    if val_loader is None and uri:
        val_loader = MlflowPerCaseLoader(uri, artifact=tracking.PER_CASE_VAL_ARTIFACT, artifact_uris=uris)
    if per_case_loader is None:
        return None
    return CaseTables(finished, per_case_loader, val_loader, metric)


def finished_runs(runs: pd.DataFrame, stage: str | None = "final", prefix: str = "test_") -> pd.DataFrame:
    """Key columns of the finished runs whose metrics a leaderboard shows (the runs its statistics use)."""
    rows = select_runs(runs, stage, prefix).rows
    return rows[_status_masks(rows)["n"]]


def _interval_values(values: pd.DataFrame, fin: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The values confidence intervals are computed from: each run, but under protocol cv one
    fold-averaged value per seed (fold models share training data, so folds are not independent)."""
    cv = fin["protocol"].eq(CV)
    if not cv.any():
        return values
    per_seed = values[cv].assign(seed=fin.loc[cv, "seed"].fillna("")).groupby([*KEYS, "seed"], sort=True)[list(keys)]
    seed_means = per_seed.mean().reset_index().drop(columns="seed")
    return pd.concat([values[~cv][[*KEYS, *keys]], seed_means], ignore_index=True)


def _display_values(runs: pd.DataFrame, fin: pd.DataFrame, keys: Sequence[str], prefix: str) -> pd.DataFrame:
    """Key columns, each metric in display units (percent for fractions) and ``cost.*``, per finished run."""
    data: dict[str, pd.Series | float] = {k: fin[k] for k in KEYS}
    for key in keys:
        col = f"metrics.{prefix}{key}"
        scale = 100.0 if metric_unit(key) == "pct" else 1.0
        data[key] = runs.loc[fin.index, col].astype("float64") * scale if col in runs.columns else np.nan
    for key in COST_METRICS:
        col = f"metrics.{key}"
        data[f"cost.{key}"] = runs.loc[fin.index, col].astype("float64") if col in runs.columns else np.nan
    return pd.DataFrame(data, index=fin.index)


def _cost_columns(cost) -> dict[str, pd.Series]:
    """Cost per group: parameters, GMACs, training time, device-hours, latency, peak memory, epochs."""
    mean = cost.mean()
    return dict(
        n_params=mean["cost.n_params"],
        gmacs=mean["cost.gmacs"],
        train_time_s_mean=mean["cost.train_time_s"],
        device_hours_mean=mean["cost.device_hours"],
        device_hours_total=cost.sum(min_count=1)["cost.device_hours"],
        latency_ms_mean=mean["cost.latency_ms"],
        latency_ms_std=cost.std(ddof=1)["cost.latency_ms"],
        peak_mem_mb_max=cost.max()["cost.peak_mem_mb"],
        epochs_mean=mean["cost.epochs"],
    )


@functools.lru_cache(maxsize=None)
def _silenced(twin: str, dataset: str) -> int | None:
    """Parameters the ablation silences, counted on the twin built as registered for ``dataset``
    (its classes and channels); None when the model or dataset is not installed here."""
    import vmbench
    from vmbench.ablation import silenced_parameter_count

    info = registered_dataset(dataset)
    try:
        model = vmbench.create_model(twin, num_classes=info.num_classes if info else 1,
                                     in_chans=info.in_chans if info else 3)
    except UnknownNameError:
        return None
    return silenced_parameter_count(model)


def acting_parameters(twin: str, dataset: str, n_params: float) -> float:
    """The twin's logged parameters minus those its ablation silences: runs log every parameter the
    twin holds (its silenced weights stay in the checkpoint), not the ones that act."""
    if pd.isna(n_params):
        return np.nan
    silenced = _silenced(twin, dataset)
    return float(n_params) - silenced if silenced is not None else np.nan


def _empty_frame(attrs: dict) -> pd.DataFrame:
    frame = pd.DataFrame(columns=[*KEYS, "kind", "source", *COUNTS])
    frame.attrs.update(attrs)
    return frame


def _order(out: pd.DataFrame) -> pd.DataFrame:
    """Measured rows first, each block by DSC (descending); published rows after them."""
    primary = f"{metric_column(PRIMARY)}_mean"
    sort_key = out[primary] if primary in out.columns else pd.Series(np.nan, index=out.index)
    return (
        out.assign(_pub=out["kind"].eq(PUBLISHED), _dsc=sort_key,
                   _on=out["scored_on"].fillna("") if "scored_on" in out.columns else "")
        .sort_values(["dataset", "protocol", "_on", "_pub", "_dsc", "model"],
                     ascending=[True, True, True, True, False, True], na_position="last")
        .drop(columns=["_pub", "_dsc", "_on"])
        .reset_index(drop=True)
    )
