"""Time the leaderboard at scale: aggregation of N synthetic runs and reading N runs from MLflow.

    python benchmarks/leaderboard_scale.py --bench 10000 [--db FOLDER] [--logged 500]

Prints the time to aggregate and render N in-memory runs, then builds an SQLite MLflow store of N
trial runs (``--logged`` of them through ``MlflowClient``, the rest SQL copies of those) and
times :func:`vmbench.leaderboard.load_runs` with its read-only SQL reader against MLflow's own
``search_runs``. ``synthetic_runs`` is also what ``tests/leaderboard/test_leaderboard.py`` aggregates.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import vmbench
from vmbench import tracking
from vmbench.leaderboard import leaderboard, load_runs, render
from vmbench.leaderboard.columns import COST_METRICS
from vmbench.leaderboard.store import build_filter


def synthetic_runs(n_runs: int, seed: int = 0, search_fraction: float = 0.0) -> pd.DataFrame:
    """A frame shaped like ``load_runs`` output with ``n_runs`` Synapse/ISIC trial runs.

    All final runs by default; ``search_fraction`` of them become search trials (a fifth of those
    pruned by ASHA), as in a sweep, where most runs are search trials.
    """
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
    search = rng.random(n_runs) < search_fraction
    frame[f"tags.{tracking.TAG_STAGE}"] = np.where(search, tracking.STAGE_SEARCH, tracking.STAGE_FINAL)
    frame[f"tags.{tracking.TAG_OUTCOME}"] = np.where(
        search & (rng.random(n_runs) < 0.2), tracking.PRUNED, tracking.COMPLETED)
    organs = vmbench.dataset_info("synapse").foreground_classes
    metric_names = ["dsc", "miou", "acc", "spe", "sen", "per_image_dice", "hd95", "dsc_strict", "hd95_strict"]
    metric_names += [f"dsc_{o}" for o in organs] + [f"hd95_{o}" for o in organs]
    metrics = {
        f"metrics.test_{m}": rng.uniform(5, 40, n_runs) if m.startswith("hd95") else rng.uniform(0.5, 0.9, n_runs)
        for m in metric_names
    }
    metrics.update({f"metrics.{c}": rng.uniform(1, 100, n_runs) for c in COST_METRICS})
    return pd.concat([frame, pd.DataFrame(metrics)], axis=1)


def clone_sqlite_runs(db_path: Path, experiment_id: str, target: int) -> int:
    """Copy the experiment's trial runs (tags, params, metrics) in SQL until it holds ``target``.

    Logging 10,000 runs through MLflow takes tens of minutes on a small machine; the copies read
    back exactly as logged runs do, which is what the search timing needs. The INSERT lists the
    columns it copies by name (MLflow 3.17 schema; columns added later keep their defaults).
    """
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
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, deleted_time) "
                "SELECT m.new, r.name, r.source_type, r.source_name, r.entry_point_name, r.user_id, "
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


def bench_aggregation(n_runs: int) -> None:
    """Aggregate and render ``n_runs`` in-memory runs."""
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


def build_store(db_path: Path, n_runs: int, logged: int, search_fraction: float = 0.0) -> str:
    """An SQLite store with ``n_runs`` trial runs: ``logged`` through MlflowClient, the rest SQL copies.

    Each run has a 20-epoch history of ``val_dsc``, ``train_loss`` and ``epoch_time_s``.
    """
    import mlflow
    from mlflow.entities import Metric, Param

    frame = synthetic_runs(n_runs, search_fraction=search_fraction)
    uri = f"sqlite:///{db_path.resolve()}"
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
            for e in range(1, 21):  # a per-epoch history
                ms += [Metric("val_dsc", 0.5 + e / 100, 0, e), Metric("train_loss", 1.0 / e, 0, e),
                       Metric("epoch_time_s", 30.0, 0, e)]
            ps = [Param(f"cfg.p{j}", str(j * 0.1)) for j in range(40)]  # a flattened config's worth of params
            ps += [Param("optim.lr", "0.001"), Param("search.optim.lr", str(10 ** -(2 + i % 3)))]
            client.log_batch(run.info.run_id, metrics=ms, params=ps)
            client.set_terminated(run.info.run_id, status=row["status"])
        dt = time.perf_counter() - t0
        print(f"logged {to_log} runs through MlflowClient in {dt:.1f} s ({1000 * dt / to_log:.0f} ms per run)")
    total = clone_sqlite_runs(db_path, exp, n_runs)
    print(f"store: {uri}, {total} trial runs (35 metrics + 3 x 20-epoch histories, 42 params, 12 tags each)")
    return uri


def bench_search(uri: str) -> None:
    """Time each way of reading the store's runs, then the leaderboard on them."""
    import mlflow

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time aggregation and MLflow search over synthetic runs.")
    parser.add_argument("--bench", type=int, default=10000, help="number of runs")
    parser.add_argument("--db", help="folder of the SQLite store (reused if it holds the runs)")
    parser.add_argument("--logged", type=int, default=500, help="runs logged through MLflow; the rest are SQL copies")
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    bench_aggregation(args.bench)
    db_path = Path(args.db or tempfile.mkdtemp(prefix="vmbench-bench-")) / "mlflow.db"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    bench_search(build_store(db_path, args.bench, args.logged))


if __name__ == "__main__":
    main()
