"""``vmbench leaderboard``: comparison tables from the MLflow runs of final retrainings.

One row per (dataset, protocol, model) over the seeds of the final runs (``vmbench.stage = final``,
status FINISHED; failed/killed and still-running runs are counted, never averaged): every metric
as mean ± sample std with a 95 % t-interval over seeds, the number of seeds, cost (parameters,
GMACs, training time, device-hours, latency, peak memory), a paired Wilcoxon signed-rank test of
per-case DSC against a reference model, and the published rows of the model registry beside them
(marked, with their source; never mixed into the means).

Units: the MLflow ``test_*`` metrics are fractions in [0, 1] (HD95 in voxels); the leaderboard
shows them in percent (HD95 in voxels), the unit published tables use, and names the unit in
every column: ``dsc_pct_mean``, ``hd95_vox_mean``.

API::

    runs = load_runs(tracking_uri, dataset="synapse")      # pandas DataFrame, one row per run
    table = leaderboard(runs, reference="vmunet")           # one row per (dataset, protocol, model)
    print(render(table, "md"))

``python -m vmbench.leaderboard --bench 10000`` times aggregation and an MLflow search over
10,000 synthetic runs.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from vmbench import tracking
from vmbench.environment import temporary_env
from vmbench.tracking import PRUNED, TAG_OUTCOME

__all__ = [
    "MlflowPerCaseLoader",
    "add_parser",
    "cmd_leaderboard",
    "leaderboard",
    "load_runs",
    "metric_column",
    "plot",
    "print_for_sweep",
    "print_terminal",
    "render",
    "resolve_tracking_uri",
    "split_tables",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Metrics, units and protocols
# --------------------------------------------------------------------------------------------

ISIC_METRICS = ("miou", "dsc", "acc", "spe", "sen", "per_image_dice", "per_image_iou", "per_image_acc")
ISIC_DEFAULT = ("miou", "dsc", "acc", "spe", "sen", "per_image_dice")
ORGANS = ("aorta", "gallbladder", "kidney_l", "kidney_r", "liver", "pancreas", "spleen", "stomach")
SYNAPSE_DEFAULT = ("dsc", "hd95", *(f"dsc_{o}" for o in ORGANS), "dsc_strict", "hd95_strict")
COST_METRICS = ("n_params", "gmacs", "train_time_s", "device_hours", "latency_ms", "peak_mem_mb", "epochs")
PRIMARY = "dsc"

LABELS = {
    "miou": "mIoU",
    "dsc": "DSC",
    "acc": "Acc",
    "spe": "Spe",
    "sen": "Sen",
    "per_image_dice": "DSC/img",
    "per_image_iou": "IoU/img",
    "per_image_acc": "Acc/img",
    "hd95": "HD95",
    "dsc_strict": "DSC strict",
    "hd95_strict": "HD95 strict",
}
_ORGAN_LABELS = {
    "aorta": "Aorta",
    "gallbladder": "Gallbl.",
    "kidney_l": "Kid L",
    "kidney_r": "Kid R",
    "liver": "Liver",
    "pancreas": "Pancr.",
    "spleen": "Spleen",
    "stomach": "Stom.",
}

# Keys of PublishedResult.metrics that name a vmbench metric differently.
PUBLISHED_ALIASES = {
    "dice_per_image": "per_image_dice",
    "iou_per_image": "per_image_iou",
    "acc_per_image": "per_image_acc",
}

PROTOCOLS = {
    "holdout": "checkpoint selected on a validation split disjoint from test",
    "paper": "the papers' protocol (ISIC P1 pooled confusion matrix / Synapse P3), papers' selection rule",
    "paper-p2": "TransFuse's ISIC protocol P2: per-image mean over the official 600-image ISIC2017 test set at 192x256",
}
# Protocols vmbench runs are tagged with (vmbench.data.common.PROTOCOLS). Published rows of these
# join the measured tables of their dataset; a published row of any other protocol (P2) is not
# comparable with them and gets a table of its own (protocols.md §4: the three are incompatible).
RUN_PROTOCOLS = ("holdout", "paper")

MEASURED, PUBLISHED = "measured", "published"
_FAILED = ("FAILED", "KILLED")
_FINISHED = "FINISHED"


def metric_unit(key: str) -> str:
    """'vox' for HD95 (voxels), 'pct' for fraction metrics shown in percent, '' for others."""
    if key.startswith("hd95"):
        return "vox"
    if key in ISIC_METRICS or key == "dsc" or key.startswith(("dsc_", "per_image_", "iou", "miou")):
        return "pct"
    return ""


def metric_column(key: str) -> str:
    """Column prefix of a metric in the leaderboard frame: ``dsc`` -> ``dsc_pct``."""
    unit = metric_unit(key)
    return f"{key}_{unit}" if unit else key


def metric_label(key: str) -> str:
    if key in LABELS:
        base = LABELS[key]
    elif key.startswith("dsc_") and key[4:] in _ORGAN_LABELS:
        base = _ORGAN_LABELS[key[4:]]
    elif key.startswith("hd95_") and key[5:] in _ORGAN_LABELS:
        base = "HD95 " + _ORGAN_LABELS[key[5:]]
    else:
        base = key
    unit = {"pct": "%", "vox": "vox"}.get(metric_unit(key), "")
    return f"{base} {unit}".strip()


def _dataset_evaluation(name: str, frame: pd.DataFrame | None = None, prefix: str = "test_") -> str:
    """'volume' (Synapse-like) or 'pooled2d' (ISIC-like): the registry's, else guessed from metrics."""
    try:
        import vmbench

        return vmbench.dataset_info(name).evaluation
    except Exception:
        pass
    if frame is not None and f"metrics.{prefix}hd95" in frame.columns and frame[f"metrics.{prefix}hd95"].notna().any():
        return "volume"
    if "synapse" in name.lower():
        return "volume"
    return "pooled2d"


def default_metrics(evaluation: str, present: Iterable[str] = ()) -> list[str]:
    """Metric keys shown for a dataset kind; per-organ keys found in the runs follow the known ones."""
    present = list(present)
    if evaluation == "volume":
        keys = list(SYNAPSE_DEFAULT)
        extra_organs = sorted(
            k for k in present if k.startswith("dsc_") and k not in keys and not k.endswith("_strict")
        )
        keys[2 + len(ORGANS) : 2 + len(ORGANS)] = extra_organs
        return keys
    keys = list(ISIC_DEFAULT)
    keys += [k for k in ("per_image_iou",) if k in present]
    return keys


# --------------------------------------------------------------------------------------------
# Loading runs from MLflow
# --------------------------------------------------------------------------------------------


def resolve_tracking_uri(uri: str | None = None, runs_dir: str | Path | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``<runs_dir>/mlflow.db`` (not created here)."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(runs_dir or tracking.DEFAULT_RUNS_DIR).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out: list[str] = []
    for item in value:
        out += [v.strip() for v in str(item).split(",") if v.strip()]
    return out


def build_filter(
    dataset: str | Sequence[str] | None = None,
    protocol: str | Sequence[str] | None = None,
    model: str | Sequence[str] | None = None,
    stage: str | None = "final",
) -> tuple[str, dict[str, list[str]]]:
    """An MLflow ``filter_string`` on the vmbench tags, plus the filters it cannot express.

    MLflow tag filters have no ``IN``: a single value is filtered on the server, several values
    on the client (returned in the second element, tag -> allowed values).
    """
    clauses = [f"tags.`{tracking.TAG_KIND}` = 'trial'"]
    client_side: dict[str, list[str]] = {}
    if stage and stage != "all":
        clauses.append(f"tags.`{tracking.TAG_STAGE}` = {_quote(stage)}")
    for tag, value in ((tracking.TAG_DATASET, dataset), (tracking.TAG_PROTOCOL, protocol), (tracking.TAG_MODEL, model)):
        values = _as_list(value)
        if len(values) == 1:
            clauses.append(f"tags.`{tag}` = {_quote(values[0])}")
        elif values:
            client_side[tag] = values
    return " and ".join(clauses), client_side


def _experiment_ids(client, experiment: str | Sequence[str] | None) -> list[str]:
    from mlflow.entities import ViewType

    names = _as_list(experiment)
    if not names:
        ids, token = [], None
        while True:
            page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None and name.isdigit():
            try:
                exp = client.get_experiment(name)
            except Exception:
                exp = None
        if exp is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments(max_results=1000))) or "none"
            raise ValueError(f"no MLflow experiment named {name!r} (known: {known})")
        ids.append(exp.experiment_id)
    return ids


def load_runs(
    tracking_uri: str | None = None,
    experiment: str | Sequence[str] | None = None,
    dataset: str | Sequence[str] | None = None,
    protocol: str | Sequence[str] | None = None,
    model: str | Sequence[str] | None = None,
    stage: str | None = "final",
    *,
    params: bool = False,
    page_size: int = 10000,
    engine: str = "auto",
) -> pd.DataFrame:
    """The vmbench trial runs matching the filters, one row per run, every status.

    Columns follow ``mlflow.search_runs``: ``run_id``, ``experiment_id``, ``status``,
    ``start_time``/``end_time`` (datetime64 UTC), ``metrics.*`` (float64, latest values),
    ``tags.*`` (str) and, with ``params=True``, ``params.*`` (cast to numbers where every value
    parses). Filtering on the tags happens in the store (``filter_string``); all active
    experiments are searched when none is given. The frame's ``attrs`` record the tracking URI
    and the filter.

    ``engine``: ``"mlflow"`` pages through ``MlflowClient.search_runs``. MLflow's SQL store builds
    an ORM object per tag, param and metric of every run (about 85 per vmbench run), which makes
    it the bottleneck for large stores; ``"sql"`` reads the same rows of a ``sqlite:`` store
    read-only with three SQL queries (runs, tags, latest metrics; params only when asked).
    ``"auto"`` uses ``"sql"`` for SQLite stores whose schema it recognises, else ``"mlflow"``.
    """
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    path = _sqlite_path(uri)
    if engine not in ("auto", "mlflow", "sql"):
        raise ValueError(f"engine {engine!r}: expected auto, mlflow or sql")
    if engine == "sql" and path is None:
        raise ValueError(f"engine 'sql' needs a sqlite:/// tracking URI, not {uri}")
    if path is not None and not path.exists():
        raise FileNotFoundError(f"no MLflow store at {path} (tracking URI {uri})")
    filter_string, client_side = build_filter(dataset, protocol, model, stage)
    logging.getLogger("mlflow").setLevel(max(logging.getLogger("mlflow").level, logging.WARNING))
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_ids = _experiment_ids(client, experiment)
    runs = None
    if engine != "mlflow" and path is not None:
        try:
            runs = _sqlite_search(path, exp_ids, _filter_pairs(dataset, protocol, model, stage), params)
        except _SchemaMismatch as err:
            if engine == "sql":
                raise
            log.info("reading runs through MLflow: %s", err)
    if runs is None:
        runs = _mlflow_search(client, exp_ids, filter_string, params, page_size)
    for tag, allowed in client_side.items():
        col = f"tags.{tag}"
        runs = runs[runs[col].isin(allowed)] if col in runs.columns else runs.iloc[0:0]
    runs = runs.reset_index(drop=True)
    runs.attrs.update(
        tracking_uri=uri,
        filter_string=filter_string,
        experiments=exp_ids,
        description=_describe_search(uri, experiment, dataset, protocol, model, stage),
    )
    return runs


def _mlflow_search(client, exp_ids: list[str], filter_string: str, params: bool, page_size: int) -> pd.DataFrame:
    from mlflow.entities import ViewType

    cols: dict[str, list[Any]] = {
        "run_id": [], "experiment_id": [], "status": [], "start_time": [], "end_time": [], "artifact_uri": [],
    }
    metrics: list[dict[str, float]] = []
    tags: list[dict[str, str]] = []
    par: list[dict[str, str]] = []
    token = None
    while exp_ids:
        page = client.search_runs(
            exp_ids, filter_string, run_view_type=ViewType.ACTIVE_ONLY, max_results=page_size, page_token=token
        )
        for run in page:
            info = run.info
            cols["run_id"].append(info.run_id)
            cols["experiment_id"].append(info.experiment_id)
            cols["status"].append(info.status)
            cols["start_time"].append(info.start_time)
            cols["end_time"].append(info.end_time)
            cols["artifact_uri"].append(info.artifact_uri)
            metrics.append(run.data.metrics)
            tags.append(run.data.tags)
            if params:
                par.append(run.data.params)
        token = page.token
        if not token:
            break

    frame = pd.DataFrame(cols)
    for key in ("start_time", "end_time"):
        frame[key] = pd.to_datetime(frame[key].astype("float64"), unit="ms", utc=True)
    parts = [frame]
    if metrics:
        parts.append(pd.DataFrame.from_records(metrics).astype("float64").add_prefix("metrics."))
        parts.append(pd.DataFrame.from_records(tags).add_prefix("tags."))
        if params:
            p = pd.DataFrame.from_records(par).add_prefix("params.")
            parts.append(p.apply(_cast_param))
    return pd.concat(parts, axis=1) if len(parts) > 1 else frame


class _SchemaMismatch(RuntimeError):
    pass


def _filter_pairs(dataset, protocol, model, stage) -> list[tuple[str, str]]:
    """The (tag, value) equalities of :func:`build_filter`, for the SQL path."""
    pairs = [(tracking.TAG_KIND, "trial")]
    if stage and stage != "all":
        pairs.append((tracking.TAG_STAGE, stage))
    for tag, value in ((tracking.TAG_DATASET, dataset), (tracking.TAG_PROTOCOL, protocol), (tracking.TAG_MODEL, model)):
        values = _as_list(value)
        if len(values) == 1:
            pairs.append((tag, values[0]))
    return pairs


_SCHEMA = {
    "runs": {"run_uuid", "experiment_id", "status", "start_time", "end_time", "artifact_uri", "lifecycle_stage"},
    "tags": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
}


def _sqlite_search(path: Path, exp_ids: list[str], pairs: list[tuple[str, str]], params: bool) -> pd.DataFrame:
    """Active runs of the experiments whose tags equal ``pairs``, read-only from MLflow's tables."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for table, needed in _SCHEMA.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            if not needed <= have:
                raise _SchemaMismatch(f"table {table} lacks {sorted(needed - have)} in {path}")
        where = ["r.lifecycle_stage = 'active'", f"r.experiment_id IN ({','.join('?' * len(exp_ids)) or 'NULL'})"]
        args: list[Any] = [int(e) for e in exp_ids]
        for key, value in pairs:
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?)")
            args += [key, value]
        con.execute("CREATE TEMP TABLE sel (run_uuid TEXT PRIMARY KEY, ord INTEGER)")
        con.execute(
            "INSERT INTO sel SELECT r.run_uuid, ROW_NUMBER() OVER (ORDER BY r.start_time DESC, r.run_uuid) "
            f"FROM runs r WHERE {' AND '.join(where)}",
            args,
        )
        frame = pd.read_sql_query(
            "SELECT r.run_uuid AS run_id, CAST(r.experiment_id AS TEXT) AS experiment_id, r.status, "
            "r.start_time, r.end_time, r.artifact_uri FROM runs r JOIN sel s ON s.run_uuid = r.run_uuid ORDER BY s.ord",
            con,
        )
        parts = [frame]
        for table, prefix, value in (
            ("latest_metrics", "metrics.", "CASE WHEN x.is_nan THEN NULL ELSE x.value END"),
            ("tags", "tags.", "x.value"),
            *((("params", "params.", "x.value"),) if params else ()),
        ):
            long = pd.read_sql_query(
                f"SELECT x.run_uuid, x.key, {value} AS value FROM {table} x JOIN sel s ON s.run_uuid = x.run_uuid", con
            )
            wide = long.pivot(index="run_uuid", columns="key", values="value").reindex(frame["run_id"])
            wide.columns = [f"{prefix}{c}" for c in wide.columns]
            if table == "latest_metrics":
                wide = wide.astype("float64")
            elif table == "params":
                wide = wide.apply(_cast_param)
            parts.append(wide.reset_index(drop=True))
    except sqlite3.DatabaseError as err:
        raise _SchemaMismatch(f"{path}: {err}") from err
    finally:
        con.close()
    runs = pd.concat(parts, axis=1)
    for key in ("start_time", "end_time"):
        runs[key] = pd.to_datetime(runs[key].astype("float64"), unit="ms", utc=True)
    return runs


def _cast_param(col: pd.Series) -> pd.Series:
    """Params are strings in MLflow: numbers when every present value parses, else left as text."""
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().sum() == col.notna().sum() and col.notna().any():
        return num
    return col


def _describe_search(uri, experiment, dataset, protocol, model, stage) -> str:
    parts = [f"stage={stage or 'all'}"]
    for name, value in (("experiment", experiment), ("dataset", dataset), ("protocol", protocol), ("model", model)):
        values = _as_list(value)
        parts.append(f"{name}={','.join(values) if values else 'any'}")
    return f"{', '.join(parts)} in {uri}"


# --------------------------------------------------------------------------------------------
# Per-case tables (for the paired test)
# --------------------------------------------------------------------------------------------


class MlflowPerCaseLoader:
    """``loader(run_id) -> DataFrame | None``: the run's ``eval/per_case.csv``, downloaded once.

    Files are downloaded lazily, only when a paired test needs them, into ``cache_dir`` (a
    temporary folder by default) and kept per run id for the life of the loader.
    """

    def __init__(self, tracking_uri: str, cache_dir: str | Path | None = None):
        self.tracking_uri = tracking_uri
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vmbench-percase-")
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self._frames: dict[str, pd.DataFrame | None] = {}
        self.errors: dict[str, str] = {}

    def __call__(self, run_id: str) -> pd.DataFrame | None:
        if run_id in self._frames:
            return self._frames[run_id]
        import mlflow

        frame = None
        cached = self.cache_dir / run_id / tracking.PER_CASE_ARTIFACT
        try:
            if not cached.exists():
                with temporary_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):  # no download bars
                    local = mlflow.artifacts.download_artifacts(
                        run_id=run_id,
                        artifact_path=tracking.PER_CASE_ARTIFACT,
                        dst_path=str(self.cache_dir / run_id / Path(tracking.PER_CASE_ARTIFACT).parent),
                        tracking_uri=self.tracking_uri,
                    )
                cached = Path(local)
            frame = pd.read_csv(cached, dtype={"id": str})
        except Exception as err:  # a missing artifact is reported as a note, not a crash
            self.errors[run_id] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            frame = None
        self._frames[run_id] = frame
        return frame


def per_case_dsc(frame: pd.DataFrame) -> pd.Series:
    """Per-case DSC indexed by case id: ISIC per-image dice; Synapse mean over organs of ``dice``."""
    if "id" not in frame.columns or "dice" not in frame.columns:
        raise ValueError(f"per-case table has no id/dice columns (columns: {list(frame.columns)})")
    ids = frame["id"].astype(str)
    return pd.to_numeric(frame["dice"], errors="coerce").groupby(ids).mean()


def _wilcoxon(diff: np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value (zeros dropped, as Wilcoxon's original method).

    Exact distribution for up to 50 non-zero differences without ties, else the normal
    approximation with tie correction: deterministic, unlike scipy's permutation fallback.
    """
    from scipy import stats

    d = np.round(diff, 12)  # floating-point noise must not break ties or hide zeros
    d = d[d != 0]
    if d.size == 0:
        return float("nan"), "all paired differences are zero"
    ties = np.unique(np.abs(d)).size < d.size
    method = "exact" if d.size <= 50 and not ties else "asymptotic"
    result = stats.wilcoxon(d, alternative="two-sided", method=method)
    return float(result.pvalue), method


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------

_KEYS = ["dataset", "protocol", "model"]


def _normalise(runs: pd.DataFrame, stage: str | None) -> pd.DataFrame:
    """Columns dataset/protocol/model/seed/... from the tag columns; drops non-trial rows."""
    def tag(name: str) -> pd.Series:
        col = f"tags.{name}"
        return runs[col] if col in runs.columns else pd.Series(pd.NA, index=runs.index, dtype="object")

    keep = pd.Series(True, index=runs.index)
    kind = tag(tracking.TAG_KIND)
    keep &= kind.isna() | (kind == "trial")
    if stage and stage != "all":
        st = tag(tracking.TAG_STAGE)
        keep &= st.isna() | (st == stage)
    model = tag(tracking.TAG_MODEL)
    keep &= model.notna()
    out = pd.DataFrame(
        {
            "run_id": runs["run_id"] if "run_id" in runs.columns else pd.Series(runs.index.astype(str), index=runs.index),
            "status": runs["status"] if "status" in runs.columns else _FINISHED,
            "dataset": tag(tracking.TAG_DATASET).fillna("(no dataset tag)"),
            "protocol": tag(tracking.TAG_PROTOCOL).fillna("(no protocol tag)"),
            "model": model,
            "seed": tag(tracking.TAG_SEED),
            "sweep": tag(tracking.TAG_SWEEP),
            "hardware": tag(tracking.TAG_HARDWARE),
            "val_is_test": tag(tracking.TAG_VAL_IS_TEST).astype("string").str.lower().eq("true").fillna(False),
            # ASHA-stopped search trials: their val_* metrics come from fewer epochs than the
            # others', so they are counted apart, never averaged (hpo_stack.md §2.5, §4).
            "pruned": (tag(tracking.TAG_STAGE).eq("search") & tag(TAG_OUTCOME).eq(PRUNED)).fillna(False).astype(bool),
        },
        index=runs.index,
    )
    return out[keep]


def _t975(dof: np.ndarray) -> np.ndarray:
    from scipy import stats

    dof = np.asarray(dof, dtype="float64")
    out = np.full(dof.shape, np.nan)
    ok = dof >= 1
    out[ok] = stats.t.ppf(0.975, dof[ok])
    return out


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
) -> pd.DataFrame:
    """One row per (dataset, protocol, model) of measured runs, plus published rows.

    ``runs``: :func:`load_runs` output (or ``mlflow.search_runs``'s, same columns). Only FINISHED
    runs enter the statistics; ``failed`` counts FAILED/KILLED and ``running`` the others.
    Search trials that ASHA stopped early (FINISHED, ``vmbench.outcome = pruned``) are counted in
    ``pruned`` and left out of the statistics, as the spec's ``training_iteration == max_t``.

    Per metric key ``k`` (``metric_column(k)`` = ``dsc_pct``, ``hd95_vox`` ...): ``_mean``,
    ``_std`` (sample, ddof=1), ``_ci_lo``/``_ci_hi`` (95 % t-interval over seeds; NaN with one
    seed), in display units (percent for fractions, voxels for HD95). ``metrics``: the keys
    to aggregate (default: the dataset kind's set, Synapse per-organ HD95 included).

    Paired test (``reference`` given, ``per_case_loader`` a callable ``run_id -> per-case
    DataFrame``; ``None`` uses MLflow when ``runs.attrs`` has a tracking URI, ``False`` skips):
    Wilcoxon signed-rank, two-sided, of per-case DSC (seed-averaged, paired by case id) of each
    model against the reference in the same dataset and protocol: ``wilcoxon_p``,
    ``wilcoxon_pairs``, ``dsc_diff_pp`` (mean difference in percentage points) and ``note``.

    Published rows (``kind == 'published'``, ``source`` set, ``protocol`` from the registry,
    normally 'paper') come from ``vmbench.model_info(m).published`` for the datasets measured.
    ``published_protocols`` (the ``--protocol`` filter): published rows of a protocol outside
    :data:`RUN_PROTOCOLS` (tables of their own) are kept only when it is listed.
    """
    stage_ = stage
    if prefix is None:
        prefix = "test_" if stage_ in ("final", None) else "val_"
    norm = _normalise(runs, stage_)
    if norm.empty:
        return _empty_frame()

    metric_cols = {c[len("metrics.") + len(prefix) :]: c for c in runs.columns if c.startswith(f"metrics.{prefix}")}
    pruned_mask = norm["status"].eq(_FINISHED) & norm["pruned"]
    finished_mask = norm["status"].eq(_FINISHED) & ~pruned_mask
    failed_mask = norm["status"].isin(_FAILED)

    # Status counts per group (all runs), vectorised.
    counts = (
        norm.assign(
            n=finished_mask.astype("int64"),
            failed=failed_mask.astype("int64"),
            running=(~finished_mask & ~failed_mask & ~pruned_mask).astype("int64"),
            pruned=pruned_mask.astype("int64"),
        )
        .groupby(_KEYS, sort=True)[["n", "failed", "running", "pruned"]]
        .sum()
    )

    fin = norm[finished_mask]
    # Metric keys to aggregate, per dataset kind.
    evaluations = {d: _dataset_evaluation(d, runs.loc[norm.index[norm["dataset"] == d]], prefix) for d in norm["dataset"].unique()}
    if metrics:
        keys = list(dict.fromkeys(metrics))
    else:
        keys = []
        for ev in dict.fromkeys(evaluations.values()):
            keys += default_metrics(ev, metric_cols)
        if "volume" in evaluations.values():
            keys += [f"hd95_{o}" for o in ORGANS] + sorted(
                k for k in metric_cols if k.startswith("hd95_") and k[5:] not in ORGANS and k != "hd95_strict"
            )
        keys = list(dict.fromkeys(keys))

    data: dict[str, pd.Series | float] = {k: fin[k] for k in _KEYS}
    for key in keys:
        col = metric_cols.get(key)
        scale = 100.0 if metric_unit(key) == "pct" else 1.0
        data[key] = runs.loc[fin.index, col].astype("float64") * scale if col else np.nan
    for key in COST_METRICS:
        col = f"metrics.{key}"
        data[f"cost.{key}"] = runs.loc[fin.index, col].astype("float64") if col in runs.columns else np.nan
    values = pd.DataFrame(data, index=fin.index)

    grouped = values.groupby(_KEYS, sort=True)
    mean = grouped[keys].mean()
    std = grouped[keys].std(ddof=1)
    cnt = grouped[keys].count()
    half = pd.DataFrame(
        _t975(cnt.to_numpy() - 1) * std.to_numpy() / np.sqrt(cnt.to_numpy().clip(min=1)), index=mean.index, columns=keys
    )
    meta = fin.groupby(_KEYS, sort=True).agg(
        seeds=("seed", "nunique"),
        sweeps=("sweep", "nunique"),
        val_is_test_runs=("val_is_test", "sum"),
    )
    hardware = (
        fin.dropna(subset=["hardware"])
        .groupby(_KEYS, sort=True)["hardware"]
        .agg(lambda s: " | ".join(sorted(set(s))))
        .rename("hardware")
    )
    cost = grouped[[f"cost.{k}" for k in COST_METRICS]]
    cmean = cost.mean()
    columns: dict[str, pd.Series] = {}
    for key in keys:
        c = metric_column(key)
        columns[f"{c}_mean"] = mean[key]
        columns[f"{c}_std"] = std[key]
        columns[f"{c}_ci_lo"] = mean[key] - half[key]
        columns[f"{c}_ci_hi"] = mean[key] + half[key]
    columns.update(
        n_params=cmean["cost.n_params"],
        gmacs=cmean["cost.gmacs"],
        train_time_s_mean=cmean["cost.train_time_s"],
        device_hours_mean=cmean["cost.device_hours"],
        device_hours_total=cost.sum(min_count=1)["cost.device_hours"],
        latency_ms_mean=cmean["cost.latency_ms"],
        latency_ms_std=cost.std(ddof=1)["cost.latency_ms"],
        peak_mem_mb_max=cost.max()["cost.peak_mem_mb"],
        epochs_mean=cmean["cost.epochs"],
    )
    out = pd.concat([counts, meta, hardware, pd.DataFrame(columns)], axis=1).reset_index()
    out.insert(3, "kind", MEASURED)
    out.insert(4, "source", "vmbench runs")
    for col in ("seeds", "sweeps", "val_is_test_runs"):
        out[col] = out[col].fillna(0).astype("int64")
    out["evaluation"] = out["dataset"].map(evaluations)
    out["wilcoxon_p"] = np.nan
    out["wilcoxon_pairs"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out["dsc_diff_pp"] = np.nan
    out["note"] = ""
    out = out.copy()

    # Paired test against the reference.
    if reference and per_case_loader is not False:
        loader = per_case_loader
        if loader is None and runs.attrs.get("tracking_uri"):
            loader = MlflowPerCaseLoader(runs.attrs["tracking_uri"])
        _paired_tests(out, fin, reference, loader)

    if with_published:
        pub = _published_rows(sorted(out["dataset"].unique()), keys, published_models)
        if not pub.empty and published_protocols:
            # A protocol filter asks for those tables only; the runs' own protocols stay as references.
            pub = pub[pub["protocol"].isin([*RUN_PROTOCOLS, *published_protocols])]
        if not pub.empty:
            out = pd.concat([out, pub], ignore_index=True)
    for col in ("n", "failed", "running", "pruned", "seeds", "sweeps", "val_is_test_runs"):
        out[col] = out[col].astype("Int64")  # counts; missing (<NA>) on published rows
    out = _order(out)
    out.attrs.update(
        reference=reference,
        metrics=keys,
        prefix=prefix,
        stage=stage_,
        tracking_uri=runs.attrs.get("tracking_uri"),
        description=runs.attrs.get("description"),
        explicit_metrics=bool(metrics),
        paired_test=bool(reference) and per_case_loader is not False,
    )
    return out


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(columns=[*_KEYS, "kind", "source", "n", "failed", "running", "pruned"])


def _paired_tests(out: pd.DataFrame, fin: pd.DataFrame, reference: str, loader) -> None:
    """Fill wilcoxon_* and note in ``out`` (measured rows) in place."""
    if loader is None:
        out.loc[out["model"] != reference, "note"] = "paired test skipped: no per-case loader (no tracking URI)"
        return
    run_ids = fin.groupby(_KEYS, sort=False)["run_id"].agg(list)

    cache: dict[tuple, tuple[pd.Series | None, str]] = {}

    def case_means(key: tuple) -> tuple[pd.Series | None, str]:
        """Per-case DSC (fraction) averaged over the seeds of one group, and a note."""
        if key in cache:
            return cache[key]
        ids = run_ids.get(key, [])
        series, missing = [], 0
        for run_id in ids:
            frame = loader(run_id)
            if frame is None or frame.empty:
                missing += 1
                continue
            series.append(per_case_dsc(frame))
        note = f"per-case CSV missing for {missing} of {len(ids)} runs" if missing else ""
        if not series:
            cache[key] = (None, note or "no per-case CSV")
        else:
            both = pd.concat(series, axis=1)
            cache[key] = (both.mean(axis=1, skipna=True), note)
        return cache[key]

    for i, row in out.iterrows():
        key = (row["dataset"], row["protocol"], row["model"])
        ref_key = (row["dataset"], row["protocol"], reference)
        if row["model"] == reference:
            out.at[i, "note"] = "reference"
            continue
        if ref_key not in run_ids.index:
            out.at[i, "note"] = f"paired test skipped: reference {reference!r} has no finished runs here"
            continue
        if key not in run_ids.index:
            out.at[i, "note"] = "paired test skipped: no finished runs"
            continue
        mine, note_m = case_means(key)
        ref, note_r = case_means(ref_key)
        notes = [n for n in (note_m, f"reference {reference}: {note_r}" if note_r else "") if n]
        if mine is None or ref is None:
            out.at[i, "note"] = "paired test skipped: " + "; ".join(notes)
            continue
        joined = pd.concat([mine.rename("m"), ref.rename("r")], axis=1, join="inner").dropna()
        if joined.empty:
            out.at[i, "note"] = "paired test skipped: no case ids shared with the reference"
            continue
        diff = (joined["m"] - joined["r"]).to_numpy(dtype="float64")
        p, method = _wilcoxon(diff)
        out.at[i, "wilcoxon_p"] = p
        out.at[i, "wilcoxon_pairs"] = len(joined)
        out.at[i, "dsc_diff_pp"] = float(diff.mean() * 100.0)
        unpaired = len(mine) + len(ref) - 2 * len(joined)
        if unpaired:
            notes.append(f"{unpaired} unpaired cases left out")
        if method not in ("exact", "asymptotic"):
            notes.append(method)
        elif method == "asymptotic":
            notes.append("normal approximation")
        out.at[i, "note"] = "; ".join(notes)


def _published_rows(datasets: Sequence[str], keys: Sequence[str], models: Sequence[str] | None) -> pd.DataFrame:
    import vmbench

    rows = []
    wanted = set(datasets)
    names = models if models else vmbench.list_models()
    for name in names:
        try:
            info = vmbench.model_info(name)
        except Exception:
            continue
        for result in info.published:
            if result.dataset not in wanted:
                continue
            row: dict[str, Any] = {
                "dataset": result.dataset,
                "protocol": result.protocol,
                "model": name,
                "kind": PUBLISHED,
                "source": result.source,
            }
            for key, value in result.metrics.items():
                key = PUBLISHED_ALIASES.get(key, key)
                # Published values are already in display units (percent; HD95 in voxels).
                row[f"{metric_column(key)}_mean"] = float(value)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["evaluation"] = frame["dataset"].map(lambda d: _dataset_evaluation(d))
    # Keep only metric columns the leaderboard knows (others would be silently unlabeled).
    known = {f"{metric_column(k)}_mean" for k in keys}
    extra = [c for c in frame.columns if c.endswith("_mean") and c not in known]
    if extra:
        log.debug("published metrics not shown: %s", extra)
        frame = frame.drop(columns=extra)
    return frame


def _order(out: pd.DataFrame) -> pd.DataFrame:
    """Measured rows first, each block by DSC (descending); published rows after them."""
    primary = f"{metric_column(PRIMARY)}_mean"
    sort_key = out[primary] if primary in out.columns else pd.Series(np.nan, index=out.index)
    return (
        out.assign(_pub=out["kind"].eq(PUBLISHED), _dsc=sort_key)
        .sort_values(["dataset", "protocol", "_pub", "_dsc", "model"], ascending=[True, True, True, False, True], na_position="last")
        .drop(columns=["_pub", "_dsc"])
        .reset_index(drop=True)
    )


# --------------------------------------------------------------------------------------------
# Tables per dataset and protocol, and their renderings
# --------------------------------------------------------------------------------------------


@dataclass
class Table:
    dataset: str
    protocol: str
    title: str
    notes: list[str]
    rows: pd.DataFrame  # numeric rows: measured (this protocol) + published (this dataset)
    metrics: list[str]


def split_tables(board: pd.DataFrame) -> list[Table]:
    """One table per (dataset, protocol) of measured rows; the dataset's published rows follow.

    Published rows of a protocol no vmbench run uses (not in :data:`RUN_PROTOCOLS`, e.g. TransFuse's
    P2) get a table per (dataset, protocol) of their own instead, after the measured ones.
    """
    tables: list[Table] = []
    if board.empty:
        return tables
    measured = board[board["kind"] == MEASURED]
    published = board[board["kind"] == PUBLISHED]
    comparable = published["protocol"].isin(RUN_PROTOCOLS)
    published, apart = published[comparable], published[~comparable]
    reference = _paired_reference(board)
    stage = board.attrs.get("stage", "final")
    prefix = board.attrs.get("prefix") or "test_"
    all_keys = board.attrs.get("metrics") or []
    for (dataset, protocol), group in measured.groupby(["dataset", "protocol"], sort=True):
        pub = published[published["dataset"] == dataset]
        rows = pd.concat([group, pub], ignore_index=True)
        evaluation = group["evaluation"].iloc[0] if "evaluation" in group.columns else "pooled2d"
        keys = list(all_keys) if board.attrs.get("explicit_metrics") else default_metrics(evaluation, all_keys)
        keys = [k for k in keys if f"{metric_column(k)}_mean" in rows.columns and rows[f"{metric_column(k)}_mean"].notna().any()]
        if stage == "final":
            what = "final runs, test split"
        else:
            what = f"{stage or 'all'} runs, metrics '{prefix}*' (inspection, not a leaderboard)"
        title = f"{dataset} | protocol: {protocol} ({PROTOCOLS.get(protocol, 'unknown protocol')}) | {what}"
        notes = _notes(group, pub, keys, reference, protocol)
        tables.append(Table(dataset, protocol, title, notes, rows, keys))
    for (dataset, protocol), pub in apart.groupby(["dataset", "protocol"], sort=True):
        tables.append(_published_table(dataset, protocol, pub.reset_index(drop=True), all_keys, board.attrs))
    tables.sort(key=lambda t: (t.dataset, t.protocol))  # a published-only table next to its dataset's others
    return tables


def _published_table(dataset: str, protocol: str, pub: pd.DataFrame, all_keys, attrs) -> Table:
    """A table of published rows only, for a protocol that no measured table shares."""
    evaluation = pub["evaluation"].iloc[0] if "evaluation" in pub.columns else "pooled2d"
    keys = list(all_keys) if attrs.get("explicit_metrics") else default_metrics(evaluation, all_keys)
    keys = [k for k in keys if f"{metric_column(k)}_mean" in pub.columns and pub[f"{metric_column(k)}_mean"].notna().any()]
    title = f"{dataset} | protocol: {protocol} ({PROTOCOLS.get(protocol, 'unknown protocol')}) | published results only"
    notes = [
        f"Rows marked [published] are numbers reported in papers under protocol '{protocol}' (split, resolution "
        "and metric differ): not comparable with the measured tables or with other protocols' published rows.",
    ]
    return Table(dataset, protocol, title, notes, pub, keys)


def _paired_reference(board: pd.DataFrame) -> str | None:
    """The reference model when the paired test ran (p-value columns shown), else None."""
    return board.attrs.get("reference") if board.attrs.get("paired_test") else None


def _notes(group: pd.DataFrame, pub: pd.DataFrame, keys, reference, protocol) -> list[str]:
    notes = []
    n_test = int(group["val_is_test_runs"].sum())
    if n_test:
        notes.append(
            f"WARNING: {n_test} of {int(group['n'].sum())} runs selected their checkpoint on the test split "
            "(val_is_test=true): these results are optimistic."
        )
    units = sorted({metric_unit(k) for k in keys})
    unit_text = []
    if "pct" in units:
        unit_text.append("DSC and other overlap metrics in %")
    if "vox" in units:
        unit_text.append("HD95 in voxels")
    notes.append(
        "Units: " + ", ".join(unit_text or ["as logged"]) + ". Measured: mean ± sample std over seeds (n), "
        "95% CI from the t-distribution over seeds ('–' with n=1)."
    )
    failed = int(group["failed"].sum())
    running = int(group["running"].sum())
    if failed or running:
        notes.append(f"Excluded: {failed} failed/killed and {running} unfinished runs (column 'failed').")
    pruned = int(group["pruned"].sum())
    if pruned:
        notes.append(
            f"Excluded: {pruned} search trials stopped early by ASHA ({TAG_OUTCOME}={PRUNED}; column 'pruned'): "
            "their metrics come from fewer epochs. Only trials that ran the full budget are averaged."
        )
    mixed = group["hardware"].dropna()
    if mixed.str.contains(r" \| ", regex=True).any() or mixed.nunique() > 1:
        notes.append("Hardware differs between runs: latency and training time are not comparable across rows.")
    if (group["sweeps"] > 1).any():
        notes.append("Some rows pool final runs from several sweeps (vmbench.sweep).")
    if ((group["seeds"] > 0) & (group["seeds"] < group["n"])).any():
        notes.append("Some rows contain several runs with the same seed; each run counts in n.")
    if reference:
        if (group["model"] == reference).any():
            notes.append(
                "p: two-sided Wilcoxon signed-rank test of per-case DSC (ISIC: per image; Synapse: per case, mean "
                f"over organs) against {reference} (cases paired by id, per-case values averaged over seeds); "
                "ΔDSC = mean paired difference in percentage points."
            )
        else:
            notes.append(f"Paired test skipped: reference model {reference!r} has no finished runs in this table.")
    if not pub.empty:
        protos = ", ".join(sorted(set(pub["protocol"])))
        caveat = "" if protocol in set(pub["protocol"]) else f"; this table's runs use protocol '{protocol}', not directly comparable"
        notes.append(
            f"Rows marked [published] are numbers reported in papers (protocol: {protos}), "
            f"shown as published, never averaged with runs{caveat}."
        )
    if any(k.startswith("dsc_") and k[4:] in ORGANS for k in keys):
        notes.append("Organ columns use the runs' class names (label mapping B of protocols.md §6 unless re-checked).")
    return notes


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    return f"{float(value):.{digits}f}"


def _fmt_p(p: Any) -> str:
    if p is None or p is pd.NA or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def display_frame(table: Table, reference: str | None, ci: str = "all", pm: str = "±") -> pd.DataFrame:
    """Strings for printing: metrics as 'mean ± std', CIs as '[lo, hi]', units in the headers.

    ``ci``: 'all' (a CI column per metric), 'primary' (DSC and HD95 only) or 'none'.
    """
    rows = table.rows
    out = pd.DataFrame(index=rows.index)
    is_pub = rows["kind"].eq(PUBLISHED)
    out["Model"] = rows["model"].where(~is_pub, rows["model"] + " [published]")
    out["Protocol"] = rows["protocol"]
    out["n"] = [("–" if p else str(int(n))) for p, n in zip(is_pub, rows["n"].fillna(0))]
    out["Failed"] = [("–" if p else str(int(f))) for p, f in zip(is_pub, rows["failed"].fillna(0))]
    if (rows["running"].fillna(0) > 0).any():
        out["Running"] = [("–" if p else str(int(f))) for p, f in zip(is_pub, rows["running"].fillna(0))]
    if "pruned" in rows.columns and (rows["pruned"].fillna(0) > 0).any():
        out["Pruned"] = [("–" if p else str(int(f))) for p, f in zip(is_pub, rows["pruned"].fillna(0))]
    for key in table.metrics:
        c = metric_column(key)
        mean, std = rows[f"{c}_mean"], rows.get(f"{c}_std")
        cells = []
        for i in rows.index:
            m = mean[i]
            if pd.isna(m):
                cells.append("–")
            elif is_pub[i] or std is None or pd.isna(std[i]):
                cells.append(_fmt(m))
            else:
                cells.append(f"{_fmt(m)} {pm} {_fmt(std[i])}")
        label = metric_label(key)
        out[label] = cells
        if ci == "all" or (ci == "primary" and key in ("dsc", "hd95")):
            lo, hi = rows.get(f"{c}_ci_lo"), rows.get(f"{c}_ci_hi")
            out[f"{label} 95% CI"] = [
                "–" if lo is None or pd.isna(lo[i]) else f"[{_fmt(lo[i])}, {_fmt(hi[i])}]" for i in rows.index
            ]
    if reference:
        out[f"p vs {reference}"] = [
            "ref" if (not is_pub[i] and rows["model"][i] == reference) else _fmt_p(rows["wilcoxon_p"][i])
            for i in rows.index
        ]
        out["pairs"] = ["–" if pd.isna(v) else str(int(v)) for v in rows["wilcoxon_pairs"]]
        out["ΔDSC pp"] = [("–" if pd.isna(v) else f"{v:+.2f}") for v in rows["dsc_diff_pp"]]
    out["Params M"] = [_fmt(v / 1e6) if not pd.isna(v) else "–" for v in rows["n_params"]]
    out["GMACs"] = [_fmt(v) for v in rows["gmacs"]]
    out["Train h"] = [_fmt(v / 3600.0) if not pd.isna(v) else "–" for v in rows["train_time_s_mean"]]
    out["Device-h"] = [_fmt(v) for v in rows["device_hours_mean"]]
    out["Latency ms"] = [_fmt(v, 1) for v in rows["latency_ms_mean"]]
    out["Source"] = rows["source"].fillna("")
    notes = rows["note"].fillna("") if "note" in rows.columns else pd.Series("", index=rows.index)
    if notes.str.len().gt(0).any():
        out["Note"] = notes
    return out.reset_index(drop=True)


def _numeric_records(table: Table) -> pd.DataFrame:
    """The table's numeric rows, without the metric columns that are empty for its dataset."""
    rows = table.rows.drop(columns=[c for c in ("evaluation",) if c in table.rows.columns])
    shown = {metric_column(k) for k in table.metrics}
    drop = [c for c in rows.columns if (m := _metric_of(c)) is not None and m not in shown and rows[c].isna().all()]
    return rows.drop(columns=drop)


def _metric_of(column: str) -> str | None:
    for suffix in ("_mean", "_std", "_ci_lo", "_ci_hi"):
        if column.endswith(suffix) and column.endswith(("_pct" + suffix, "_vox" + suffix)):
            return column[: -len(suffix)]
    return None


def _latex_escape(text: str) -> str:
    repl = {
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "–": "--", "Δ": r"$\Delta$", "±": r"$\pm$", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    }
    return "".join(repl.get(ch, ch) for ch in str(text))


def render(board: pd.DataFrame, fmt: str = "md", *, ci: str | None = None) -> str:
    """The leaderboard as text: ``md``, ``csv``, ``html``, ``latex``, ``json`` or ``text`` (plain)."""
    tables = split_tables(board)
    reference = _paired_reference(board)
    if fmt == "csv":
        frames = [_numeric_records(t) for t in tables]
        return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""
    if fmt == "json":
        payload = {
            "tracking_uri": board.attrs.get("tracking_uri"),
            "search": board.attrs.get("description"),
            "reference": reference,
            "units": {"pct": "percent (MLflow stores fractions)", "vox": "voxels"},
            "tables": [
                {
                    "dataset": t.dataset,
                    "protocol": t.protocol,
                    "title": t.title,
                    "notes": t.notes,
                    "metrics": {k: metric_column(k) for k in t.metrics},
                    "rows": json.loads(_numeric_records(t).to_json(orient="records")),
                }
                for t in tables
            ],
        }
        return json.dumps(payload, indent=2, ensure_ascii=False)
    ci = ci or "all"
    parts: list[str] = []
    if fmt == "md":
        for t in tables:
            parts.append(f"### {t.title}\n")
            parts += [f"> {n}  " for n in t.notes]
            parts.append("")
            parts.append(display_frame(t, reference, ci).to_markdown(index=False, disable_numparse=True))
            parts.append("")
        return "\n".join(parts)
    if fmt == "html":
        parts.append('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>vmbench leaderboard</title></head><body>')
        for t in tables:
            parts.append(f"<h2>{html.escape(t.title)}</h2>")
            parts += [f"<p>{html.escape(n)}</p>" for n in t.notes]
            parts.append(display_frame(t, reference, ci).to_html(index=False, escape=True, border=1))
        parts.append("</body></html>")
        return "\n".join(parts)
    if fmt == "latex":
        for t in tables:
            frame = display_frame(t, reference, ci, pm="±")
            cols = "l" * len(frame.columns)
            parts.append("\\begin{table}[ht]\n\\centering\n\\small")
            parts.append(f"\\caption{{{_latex_escape(t.title)}}}")
            parts.append(f"\\begin{{tabular}}{{{cols}}}\n\\hline")
            parts.append(" & ".join(_latex_escape(c) for c in frame.columns) + " \\\\\n\\hline")
            for row in frame.itertuples(index=False):
                parts.append(" & ".join(_latex_escape(v) for v in row) + " \\\\")
            parts.append("\\hline\n\\end{tabular}")
            parts += [f"\\par\\footnotesize {_latex_escape(n)}" for n in t.notes]
            parts.append("\\end{table}\n")
        return "\n".join(parts)
    if fmt == "text":
        for t in tables:
            parts.append(t.title)
            parts += t.notes
            parts.append(display_frame(t, reference, ci).to_string(index=False))
            parts.append("")
        return "\n".join(parts)
    raise ValueError(f"unknown format {fmt!r} (md, csv, html, latex, json, text)")


def print_terminal(board: pd.DataFrame, file=None) -> None:
    """Rich tables, one per dataset and protocol, titled with the protocol, notes below.

    Synapse-like tables print the headline metrics first and the per-organ DSC in a second
    table, so that both fit a terminal.
    """
    from rich.console import Console

    file = file or sys.stdout
    is_tty = hasattr(file, "isatty") and file.isatty()
    # Piped output is not wrapped (tables keep their natural width).
    console = Console(file=file, width=None if is_tty else 1000, highlight=False, soft_wrap=False)
    reference = _paired_reference(board)
    for t in split_tables(board):
        frame = display_frame(t, reference, ci="primary")
        frame = frame.drop(columns=[c for c in ("Source", "Note") if c in frame.columns])
        organs = [metric_label(k) for k in t.metrics if k.startswith("dsc_") and k != "dsc_strict"]
        kinds = list(t.rows["kind"])
        if organs:
            console.print(_rich_table(frame.drop(columns=organs), kinds, t.title))
            per_organ = frame[["Model", "Protocol", "n", *organs]]
            console.print(_rich_table(per_organ, kinds, f"{t.dataset} | protocol: {t.protocol} | DSC per organ (%)"))
        else:
            console.print(_rich_table(frame, kinds, t.title))
        for note in t.notes:
            console.print(("[bold yellow]" if note.startswith("WARNING") else "") + _rich_escape(note))
        sources = t.rows[t.rows["kind"] == PUBLISHED][["model", "source"]]
        for model, source in sources.itertuples(index=False):
            console.print(_rich_escape(f"  [published] {model}: {source}"))
        notes = t.rows[(t.rows["kind"] == MEASURED) & t.rows["note"].fillna("").ne("") & t.rows["note"].ne("reference")]
        for model, note in notes[["model", "note"]].itertuples(index=False):
            console.print(_rich_escape(f"  {model}: {note}"))
        console.print()


def _rich_table(frame: pd.DataFrame, kinds: Sequence[str], title: str):
    from rich.table import Table as RichTable

    table = RichTable(title=_rich_escape(title), title_justify="left")
    for col in frame.columns:
        left = col in ("Model", "Protocol")
        table.add_column(_rich_escape(col), justify="left" if left else "right", no_wrap=left)
    for kind, row in zip(kinds, frame.itertuples(index=False)):
        table.add_row(*[_rich_escape(str(v)) for v in row], style="dim" if kind == PUBLISHED else None)
    return table


def _rich_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot(board: pd.DataFrame, path: str | Path) -> Path:
    """PNG: per table, DSC mean ± std bars per model, and DSC against GMACs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    col = metric_column(PRIMARY)
    tables = [
        t for t in split_tables(board)
        if f"{col}_mean" in t.rows.columns and t.rows.loc[t.rows["kind"] == MEASURED, f"{col}_mean"].notna().any()
    ]
    fig, axes = plt.subplots(max(len(tables), 1), 2, figsize=(12, 4 * max(len(tables), 1)), squeeze=False)
    for ax_row, t in zip(axes, tables):
        rows = t.rows
        measured = rows[rows["kind"] == MEASURED]
        published = rows[rows["kind"] == PUBLISHED]
        x = np.arange(len(measured))
        ax = ax_row[0]
        ax.bar(x, measured[f"{col}_mean"], yerr=measured[f"{col}_std"].fillna(0), capsize=4, color="tab:blue", label="measured (mean ± std)")
        pub_dsc = published.set_index("model")[f"{col}_mean"] if f"{col}_mean" in published.columns else pd.Series(dtype=float)
        px = [i for i, m in enumerate(measured["model"]) if m in pub_dsc.index]
        if px:
            ax.scatter(px, [pub_dsc[measured["model"].iloc[i]] for i in px], marker="x", color="black", zorder=3, label="published")
        ticks = [f"{m}\n(n={int(n)})" for m, n in zip(measured["model"], measured["n"].fillna(0))]
        ax.set_xticks(x, ticks, rotation=30, ha="right")
        ax.set_ylabel("DSC (%)")
        ax.set_title(f"{t.dataset} · protocol {t.protocol}", fontsize=10)
        ax.legend(fontsize=8)
        ax = ax_row[1]
        ax.errorbar(measured["gmacs"], measured[f"{col}_mean"], yerr=measured[f"{col}_std"].fillna(0), fmt="o", capsize=3)
        for _, r in measured.iterrows():
            if not pd.isna(r["gmacs"]):
                ax.annotate(r["model"], (r["gmacs"], r[f"{col}_mean"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("GMACs (thop-style, scan excluded)")
        ax.set_ylabel("DSC (%)")
        ax.set_title(f"DSC vs compute · {t.dataset} · protocol {t.protocol}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

_SUFFIX_FORMATS = {".md": "md", ".markdown": "md", ".csv": "csv", ".html": "html", ".htm": "html", ".tex": "latex", ".json": "json", ".txt": "text"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "leaderboard",
        help="comparison tables (mean ± std, 95% CI, paired Wilcoxon, cost) from the MLflow final runs",
        description=(
            "One table per dataset and protocol from the final runs (vmbench.stage=final, FINISHED) in MLflow: "
            "mean ± std and 95%% CI over seeds, failed-run counts, parameters, GMACs, training time, latency, a "
            "paired Wilcoxon test of per-case DSC against --reference, and the published rows of the registry."
        ),
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./vmbench-runs/mlflow.db)")
    p.add_argument("--experiment", action="append", help="MLflow experiment name or id (repeatable; default: all)")
    p.add_argument("--dataset", action="append", help="dataset tag (repeatable or comma-separated)")
    p.add_argument("--protocol", action="append", help=(
        "protocol tag: holdout, paper (repeatable); the published-only paper-p2 table (TransFuse P2) is shown "
        "unless --protocol is given without paper-p2"))
    p.add_argument("--model", action="append", help="model tag (repeatable or comma-separated)")
    p.add_argument(
        "--stage", choices=["final", "search", "all"], default="final",
        help="run stage (default final; search runs are shown with their val_* metrics, for inspection only)",
    )
    p.add_argument("--reference", default="vmunet", help="reference model of the paired test (default vmunet; 'none' to skip)")
    p.add_argument("--no-published", action="store_true", help="leave out the registry's published rows")
    p.add_argument("--no-wilcoxon", action="store_true", help="skip the paired test (no per-case downloads)")
    p.add_argument("--metrics", help="comma-separated metric keys to show, e.g. dsc,hd95,hd95_liver (default: per dataset)")
    p.add_argument("--format", choices=["terminal", "md", "csv", "html", "latex", "json", "text"], help=(
        "output format (default: terminal; with --out, from the file suffix)"))
    p.add_argument("--out", help="write to FILE (atomically) instead of standard output")
    p.add_argument("--plot", metavar="FILE.png", help="also write a PNG: DSC bars per model and DSC against GMACs")
    p.set_defaults(func=cmd_leaderboard)
    return p


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_leaderboard(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        fmt = _SUFFIX_FORMATS.get(Path(args.out).suffix.lower(), "md") if args.out else "terminal"
    if fmt == "terminal" and args.out:
        fmt = "text"
    stage = None if args.stage == "all" else args.stage
    try:
        runs = load_runs(
            args.tracking_uri, experiment=args.experiment, dataset=args.dataset, protocol=args.protocol,
            model=args.model, stage=args.stage,
        )
    except FileNotFoundError as err:
        print(f"vmbench leaderboard: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        from mlflow.exceptions import MlflowException

        if not isinstance(err, MlflowException):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"vmbench leaderboard: cannot read runs from {resolve_tracking_uri(args.tracking_uri)}: {first}", file=sys.stderr)
        return 1
    where = runs.attrs.get("description", "")
    reference = None if (args.reference or "").lower() in ("", "none") else args.reference
    metrics = _as_list(args.metrics) or None
    board = leaderboard(
        runs, reference=reference, metrics=metrics, with_published=not args.no_published,
        per_case_loader=False if (args.no_wilcoxon or stage != "final") else None,
        stage=stage, published_models=_as_list(args.model) or None,
        published_protocols=_as_list(args.protocol) or None,
    )
    measured = board[board["kind"] == MEASURED] if not board.empty else board
    if measured.empty or int(measured["n"].sum()) == 0:
        failed = int(measured["failed"].sum()) if not measured.empty else 0
        running = int(measured["running"].sum()) if not measured.empty else 0
        pruned = int(measured["pruned"].sum()) if not measured.empty else 0
        extra = f" ({failed} failed/killed and {running} unfinished runs matched)" if failed or running else ""
        if pruned:
            extra += f" ({pruned} ASHA-stopped trials left out)"
        print(f"vmbench leaderboard: no finished vmbench runs found for {where}{extra}", file=sys.stderr)
        return 1
    if fmt == "terminal":
        print_terminal(board)
    else:
        text = render(board, fmt)
        if args.out:
            _write_atomic(Path(args.out), text)
            print(f"wrote {args.out} ({fmt}, {len(split_tables(board))} tables)", file=sys.stderr)
        else:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.plot:
        plot(board, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def print_for_sweep(
    tracking_uri: str | None, experiment: str, runs_dir: str | Path | None = None, file=None
) -> bool:
    """The terminal leaderboard of one sweep's experiment, printed after ``vmbench sweep``.

    Never raises: a sweep that trained for hours must not end in a leaderboard traceback; a
    problem is one line. Returns whether a table was printed.
    """
    file = file or sys.stdout
    try:
        uri = resolve_tracking_uri(tracking_uri, runs_dir)
        runs = load_runs(uri, experiment=experiment)
        board = leaderboard(runs)
        measured = board[board["kind"] == MEASURED] if not board.empty else board
        if measured.empty:
            print(f"(leaderboard: no final runs in experiment {experiment!r} at {uri})", file=file)
            return False
        print_terminal(board, file=file)
        print(f"(vmbench leaderboard --tracking-uri {uri} --experiment {experiment} for other formats)", file=file)
        return True
    except Exception as err:  # noqa: BLE001 - reported in one line, see docstring
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"(leaderboard failed: {type(err).__name__}: {first})", file=file)
        return False


# --------------------------------------------------------------------------------------------
# Benchmark: python -m vmbench.leaderboard --bench N
# --------------------------------------------------------------------------------------------


def synthetic_runs(n_runs: int, seed: int = 0) -> pd.DataFrame:
    """A frame shaped like :func:`load_runs` output with ``n_runs`` final Synapse/ISIC runs."""
    rng = np.random.default_rng(seed)
    models = ["vmunet", "unet", "att-unet", "swin-unet", "transfuse-s"]
    datasets = ["synapse", "isic2017", "isic2018"]
    protocols = ["holdout", "paper"]
    idx = np.arange(n_runs)
    frame = pd.DataFrame(
        {
            "run_id": [f"r{i:06d}" for i in idx],
            "status": np.where(rng.random(n_runs) < 0.05, "FAILED", "FINISHED"),
            f"tags.{tracking.TAG_KIND}": "trial",
            f"tags.{tracking.TAG_STAGE}": "final",
            f"tags.{tracking.TAG_MODEL}": np.array(models)[idx % len(models)],
            f"tags.{tracking.TAG_DATASET}": np.array(datasets)[(idx // len(models)) % len(datasets)],
            f"tags.{tracking.TAG_PROTOCOL}": np.array(protocols)[(idx // 15) % 2],
            f"tags.{tracking.TAG_SEED}": (idx // 30).astype(str),
            f"tags.{tracking.TAG_SWEEP}": "bench",
            f"tags.{tracking.TAG_VAL_IS_TEST}": np.where((idx // 15) % 2 == 1, "true", "false"),
            f"tags.{tracking.TAG_HARDWARE}": "synthetic",
        }
    )
    metric_names = ["dsc", "miou", "acc", "spe", "sen", "per_image_dice", "hd95", "dsc_strict", "hd95_strict"]
    metric_names += [f"dsc_{o}" for o in ORGANS] + [f"hd95_{o}" for o in ORGANS]
    metrics = {f"metrics.test_{m}": rng.uniform(0.5, 0.9, n_runs) if not m.startswith("hd95") else rng.uniform(5, 40, n_runs) for m in metric_names}
    metrics.update({f"metrics.{c}": rng.uniform(1, 100, n_runs) for c in COST_METRICS})
    return pd.concat([frame, pd.DataFrame(metrics)], axis=1)


def _clone_sqlite_runs(db_path: Path, experiment_id: str, target: int) -> int:
    """Copy the experiment's trial runs (tags, params, metrics) in SQL until it holds ``target``.

    Benchmark only: logging 10,000 runs through MLflow takes tens of minutes on a small machine;
    copies read back exactly as logged runs do, which is what the search timing needs.
    """
    import sqlite3

    con = sqlite3.connect(db_path)
    try:
        ids = [r[0] for r in con.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.experiment_id = ? AND t.key = ? AND t.value = 'trial'", (int(experiment_id), tracking.TAG_KIND))]
        have, copy = len(ids), 0
        while have < target:
            copy += 1
            take = ids[: target - have]
            con.execute("CREATE TEMP TABLE IF NOT EXISTS idmap (old TEXT PRIMARY KEY, new TEXT)")
            con.execute("DELETE FROM idmap")
            con.executemany("INSERT INTO idmap VALUES (?, ?)", [(i, i[:27] + f"c{copy:04d}") for i in take])
            con.execute(
                "INSERT INTO runs SELECT m.new, r.name, r.source_type, r.source_name, r.entry_point_name, r.user_id, "
                "r.status, r.start_time, r.end_time, r.source_version, r.lifecycle_stage, "
                "replace(r.artifact_uri, r.run_uuid, m.new), r.experiment_id, r.deleted_time "
                "FROM runs r JOIN idmap m ON m.old = r.run_uuid"
            )
            for table, cols in (
                ("tags", "key, value"),
                ("params", "key, value"),
                ("latest_metrics", "key, value, timestamp, step, is_nan"),
                ("metrics", "key, value, timestamp, step, is_nan"),
            ):
                con.execute(
                    f"INSERT INTO {table} ({cols}, run_uuid) SELECT {', '.join('x.' + c.strip() for c in cols.split(','))}, "
                    f"m.new FROM {table} x JOIN idmap m ON m.old = x.run_uuid"
                )
            have += len(take)
        con.commit()
        return have
    finally:
        con.close()


def _bench(n_runs: int, db: str | None, logged: int = 500) -> None:
    """Print aggregation and MLflow search times for ``n_runs`` runs (``logged`` via MLflow, the rest SQL copies)."""
    import mlflow
    from mlflow.entities import Metric, Param

    frame = synthetic_runs(n_runs)
    t0 = time.perf_counter()
    leaderboard(frame.head(50), reference="vmunet", per_case_loader=False)
    print(f"first call (imports scipy.stats, loads the model registry): {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    board = leaderboard(frame, reference="vmunet", per_case_loader=False)
    t_agg = time.perf_counter() - t0
    t0 = time.perf_counter()
    for fmt in ("md", "csv", "json"):
        render(board, fmt)
    t_render = time.perf_counter() - t0
    print(f"aggregate {n_runs} runs (DataFrame in memory) -> {len(board)} rows: {t_agg:.3f} s; render md+csv+json: {t_render:.3f} s")

    db_path = Path(db or tempfile.mkdtemp(prefix="vmbench-bench-")) / "mlflow.db"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{db_path.resolve()}"
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = mlflow.MlflowClient(uri)
    exp = tracking.get_or_create_experiment(client, "bench", (db_path.parent / "art").as_uri())
    existing = len(client.search_runs([exp], filter_string=build_filter(stage=None)[0], max_results=50000))
    to_log = max(0, min(logged, n_runs) - existing)
    if to_log:
        t0 = time.perf_counter()
        parent = client.create_run(exp, tags={tracking.TAG_KIND: "sweep"}).info.run_id
        metric_cols = [c for c in frame.columns if c.startswith("metrics.")]
        tag_cols = [c for c in frame.columns if c.startswith("tags.")]
        for i in range(existing, existing + to_log):
            row = frame.iloc[i]
            tags = {c[5:]: str(row[c]) for c in tag_cols}
            tags[tracking.TAG_PARENT] = parent
            run = client.create_run(exp, tags=tags)
            ms = [Metric(c[8:], float(row[c]), 0, 0) for c in metric_cols]
            ms += [Metric("val_dsc", 0.5 + e / 1000, 0, e) for e in range(20)]  # a per-epoch history
            ps = [Param(f"cfg.p{j}", str(j * 0.1)) for j in range(40)]  # a flattened config's worth of params
            client.log_batch(run.info.run_id, metrics=ms, params=ps)
            client.set_terminated(run.info.run_id, status=row["status"])
        dt = time.perf_counter() - t0
        print(f"logged {to_log} runs through MlflowClient in {dt:.1f} s ({1000 * dt / to_log:.0f} ms per run)")
    total = _clone_sqlite_runs(db_path, exp, n_runs)
    print(f"store: {uri}, {total} trial runs (35 metrics, 40 params, 11 tags each)")
    mlflow.set_tracking_uri(uri)
    for label, fn in (
        ("load_runs(engine='sql') [default for sqlite: 3 read-only queries]", lambda: load_runs(uri, engine="sql")),
        ("load_runs(engine='sql', params=True)", lambda: load_runs(uri, engine="sql", params=True)),
        ("load_runs(engine='sql', dataset='synapse', model='vmunet')", lambda: load_runs(
            uri, engine="sql", dataset="synapse", model="vmunet")),
        ("load_runs(engine='mlflow') [MlflowClient.search_runs, pages of 10000]", lambda: load_runs(uri, engine="mlflow")),
        ("load_runs(engine='mlflow', page_size=1000)", lambda: load_runs(uri, engine="mlflow", page_size=1000)),
        ("load_runs(engine='mlflow', dataset='synapse', model='vmunet')", lambda: load_runs(
            uri, engine="mlflow", dataset="synapse", model="vmunet")),
        ("mlflow.search_runs(search_all_experiments=True) -> pandas", lambda: mlflow.search_runs(
            search_all_experiments=True, filter_string=build_filter()[0])),
    ):
        t0 = time.perf_counter()
        result = fn()
        print(f"{label}: {len(result)} runs in {time.perf_counter() - t0:.2f} s")
    runs = load_runs(uri)
    t0 = time.perf_counter()
    board = leaderboard(runs, reference="vmunet", per_case_loader=False)
    print(f"leaderboard() on the loaded runs: {time.perf_counter() - t0:.3f} s ({len(board)} rows)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Time aggregation and MLflow search over synthetic runs.")
    parser.add_argument("--bench", type=int, default=10000, help="number of runs")
    parser.add_argument("--db", help="folder of the SQLite store (reused if it holds the runs)")
    parser.add_argument("--logged", type=int, default=500, help="runs logged through MLflow; the rest are SQL copies")
    ns = parser.parse_args()
    _bench(ns.bench, ns.db, ns.logged)
