"""Reading vmbench runs from MLflow: :func:`load_runs` and the per-case tables of the paired test.

Two readers return the same frame (``tests/test_leaderboard.py`` checks them against each other):

* ``mlflow``: pages through ``MlflowClient.search_runs``; any store, any server;
* ``sql``: for ``sqlite:`` stores, three read-only SQL queries on MLflow's tables (runs, tags,
  latest metrics; params when asked). MLflow's SQL store builds an ORM object per tag, param and
  metric of every run (about 85 per vmbench run), which makes it ~30x slower at 10,000 runs
  (``benchmarks/leaderboard_scale.py``). A schema this reader does not recognise falls back to
  ``mlflow``, logged.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from vmbench import tracking
from vmbench.environment import temporary_env
from vmbench.errors import ConfigError, DataError, few

log = logging.getLogger(__name__)

ENGINES = ("auto", "mlflow", "sql")
_FILTER_TAGS = (("dataset", tracking.TAG_DATASET), ("protocol", tracking.TAG_PROTOCOL), ("model", tracking.TAG_MODEL))


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """Option values as a flat list: repeated and comma-separated values alike."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out: list[str] = []
    for item in value:
        out += [v.strip() for v in str(item).split(",") if v.strip()]
    return out


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tag_equalities(dataset, protocol, model, stage) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(tag, value) equalities the store filters on, and tag -> allowed values left to the client.

    MLflow tag filters have no ``IN``: a single value is filtered in the store, several values
    on the client.
    """
    pairs = [(tracking.TAG_KIND, "trial")]
    if stage and stage != "all":
        pairs.append((tracking.TAG_STAGE, stage))
    client_side: dict[str, list[str]] = {}
    for (_, tag), value in zip(_FILTER_TAGS, (dataset, protocol, model)):
        values = as_list(value)
        if len(values) == 1:
            pairs.append((tag, values[0]))
        elif values:
            client_side[tag] = values
    return pairs, client_side


def build_filter(
    dataset: str | Sequence[str] | None = None,
    protocol: str | Sequence[str] | None = None,
    model: str | Sequence[str] | None = None,
    stage: str | None = "final",
) -> tuple[str, dict[str, list[str]]]:
    """An MLflow ``filter_string`` on the vmbench tags, plus the filters it cannot express."""
    pairs, client_side = _tag_equalities(dataset, protocol, model, stage)
    return " and ".join(f"tags.`{tag}` = {_quote(value)}" for tag, value in pairs), client_side


def _experiment_ids(client, experiment: str | Sequence[str] | None) -> list[str]:
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    names = as_list(experiment)
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
            except MlflowException:  # no experiment with that id either
                exp = None
        if exp is None:
            known = few(sorted(e.name for e in client.search_experiments(max_results=1000)), 10) or "none"
            raise ConfigError(f"no MLflow experiment named {name!r} (option --experiment; known: {known})")
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
    parses). Filtering on the tags happens in the store; all active experiments are searched
    when none is given. The frame's ``attrs`` record the tracking URI and the filter.

    ``engine``: ``"mlflow"`` (``MlflowClient.search_runs``), ``"sql"`` (the read-only SQLite
    reader) or ``"auto"`` (``"sql"`` for SQLite stores whose schema it recognises, else
    ``"mlflow"``).
    """
    import mlflow

    uri = tracking.resolve_tracking_uri(tracking_uri)
    path = _check_store(uri, engine)
    filter_string, client_side = build_filter(dataset, protocol, model, stage)
    logging.getLogger("mlflow").setLevel(max(logging.getLogger("mlflow").level, logging.WARNING))
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_ids = _experiment_ids(client, experiment)
    runs = None
    if engine != "mlflow" and path is not None:
        try:
            runs = _sqlite_search(path, exp_ids, _tag_equalities(dataset, protocol, model, stage)[0], params)
            log.info("runs read from %s by vmbench's read-only SQL reader", path)
        except _SchemaMismatch as err:
            if engine == "sql":
                raise
            log.info("reading runs through MLflow's search_runs (slower): %s", err)
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


def _check_store(uri: str, engine: str) -> Path | None:
    """The SQLite file of ``uri`` (None for other stores), after checking engine and existence."""
    if engine not in ENGINES:
        raise ConfigError(f"load_runs engine {engine!r}: expected one of {', '.join(ENGINES)}")
    path = sqlite_path(uri)
    if engine == "sql" and path is None:
        raise ConfigError(f"engine 'sql' reads sqlite:/// stores only, not {uri}: use engine 'auto' or 'mlflow'")
    if path is not None and not path.exists():
        raise DataError(
            f"no MLflow store at {path} (tracking URI {uri}): run a sweep first, or pass --tracking-uri "
            "or MLFLOW_TRACKING_URI"
        )
    return path


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
            for key in cols:
                cols[key].append(getattr(run.info, key))
            metrics.append(run.data.metrics)
            tags.append(run.data.tags)
            if params:
                par.append(run.data.params)
        token = page.token
        if not token:
            break

    frame = _with_datetimes(pd.DataFrame(cols))
    parts = [frame]
    if metrics:
        parts.append(pd.DataFrame.from_records(metrics).astype("float64").add_prefix("metrics."))
        parts.append(pd.DataFrame.from_records(tags).add_prefix("tags."))
        if params:
            parts.append(pd.DataFrame.from_records(par).add_prefix("params.").apply(_cast_param))
    return pd.concat(parts, axis=1) if len(parts) > 1 else frame


class _SchemaMismatch(DataError):
    """The SQLite store's tables are not the ones the SQL reader knows."""


# The columns the SQL reader uses, per table of MLflow's schema.
_SCHEMA = {
    "runs": {"run_uuid", "experiment_id", "status", "start_time", "end_time", "artifact_uri", "lifecycle_stage"},
    "tags": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
}


def _sqlite_search(path: Path, exp_ids: list[str], pairs: list[tuple[str, str]], params: bool) -> pd.DataFrame:
    """Active runs of the experiments whose tags equal ``pairs``, read-only from MLflow's tables."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for table, needed in _SCHEMA.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            if not needed <= have:
                raise _SchemaMismatch(f"table {table} lacks {sorted(needed - have)} in {path}")
        _select_runs(con, exp_ids, pairs)
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
            parts.append(_wide(con, table, prefix, value, frame["run_id"]))
    except sqlite3.DatabaseError as err:
        raise _SchemaMismatch(f"{path}: {err}") from err
    finally:
        con.close()
    return _with_datetimes(pd.concat(parts, axis=1))


def _select_runs(con: sqlite3.Connection, exp_ids: list[str], pairs: list[tuple[str, str]]) -> None:
    """Fill the temporary table ``sel`` with the matching run ids, newest first (MLflow's order)."""
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


def _wide(con: sqlite3.Connection, table: str, prefix: str, value: str, run_ids: pd.Series) -> pd.DataFrame:
    """One column per key of ``table`` (tags, latest metrics or params), rows in ``run_ids`` order."""
    long = pd.read_sql_query(
        f"SELECT x.run_uuid, x.key, {value} AS value FROM {table} x JOIN sel s ON s.run_uuid = x.run_uuid", con
    )
    wide = long.pivot(index="run_uuid", columns="key", values="value").reindex(run_ids)
    wide.columns = [f"{prefix}{c}" for c in wide.columns]
    if table == "latest_metrics":
        wide = wide.astype("float64")
    elif table == "params":
        wide = wide.apply(_cast_param)
    return wide.reset_index(drop=True)


def _with_datetimes(frame: pd.DataFrame) -> pd.DataFrame:
    """MLflow's millisecond timestamps as datetime64 UTC, as ``mlflow.search_runs`` returns them."""
    for key in ("start_time", "end_time"):
        frame[key] = pd.to_datetime(frame[key].astype("float64"), unit="ms", utc=True)
    return frame


def _cast_param(col: pd.Series) -> pd.Series:
    """Params are strings in MLflow: numbers when every present value parses, else left as text."""
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().sum() == col.notna().sum() and col.notna().any():
        return num
    return col


def _describe_search(uri, experiment, dataset, protocol, model, stage) -> str:
    parts = [f"stage={stage or 'all'}"]
    for name, value in (("experiment", experiment), ("dataset", dataset), ("protocol", protocol), ("model", model)):
        values = as_list(value)
        parts.append(f"{name}={','.join(values) if values else 'any'}")
    return f"{', '.join(parts)} in {uri}"


class MlflowPerCaseLoader:
    """``loader(run_id) -> DataFrame | None``: the run's per-case CSV (``eval/per_case.csv``), read once.

    ``artifact``: which per-case file (:data:`vmbench.tracking.PER_CASE_ARTIFACT`, or
    :data:`~vmbench.tracking.PER_CASE_VAL_ARTIFACT` for a cross-validation fold's validation
    cases). Files are fetched lazily, only when a statistic needs them. Runs whose artifact URI
    (``artifact_uris``: run id -> ``artifact_uri``, the column of :func:`load_runs`) is a local
    ``file:`` folder are read in place; the others are downloaded through MLflow into
    ``cache_dir`` (a temporary folder by default). A file that is missing or unreadable gives
    None, and its reason is kept in ``errors``.
    """

    def __init__(
        self,
        tracking_uri: str,
        cache_dir: str | Path | None = None,
        artifact: str = tracking.PER_CASE_ARTIFACT,
        artifact_uris: Mapping[str, str] | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.artifact = artifact
        self.artifact_uris = dict(artifact_uris or {})
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vmbench-percase-")
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self._frames: dict[str, pd.DataFrame | None] = {}
        self.errors: dict[str, str] = {}
        self._said_local = False

    def for_artifact(self, artifact: str) -> "MlflowPerCaseLoader":
        """A loader of another per-case file of the same runs (a transfer evaluation's), sharing the cache."""
        return MlflowPerCaseLoader(self.tracking_uri, self.cache_dir, artifact, self.artifact_uris)

    def __call__(self, run_id: str) -> pd.DataFrame | None:
        if run_id in self._frames:
            return self._frames[run_id]
        from mlflow.exceptions import MlflowException

        frame = None
        try:
            frame = pd.read_csv(self._local_file(run_id) or self._download(run_id), dtype={"id": str})
        except (MlflowException, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            # A run without its per-case file is a note in the table, not a failed leaderboard.
            self.errors[run_id] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        self._frames[run_id] = frame
        return frame

    def _local_file(self, run_id: str) -> Path | None:
        """The artifact's path when the run's artifacts are a local folder (no copy needed)."""
        uri = self.artifact_uris.get(run_id) or ""
        if not uri.startswith("file:"):
            return None
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(uri).path)) / self.artifact
        if not self._said_local:
            log.info("per-case files (%s) read in place from the local artifact store, e.g. %s", self.artifact, path)
            self._said_local = True
        return path

    def _download(self, run_id: str) -> Path:
        import mlflow

        cached = self.cache_dir / run_id / self.artifact
        if cached.exists():
            return cached
        with temporary_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):  # no download bars
            return Path(mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=self.artifact,
                dst_path=str(self.cache_dir / run_id),
                tracking_uri=self.tracking_uri,
            ))
