"""Many trials logging to one MLflow SQLite store at the same moment: does any write fail or go missing?

    python benchmarks/mlflow_sqlite_concurrency.py [--procs 16] [--steps 50] [--metrics 10] [--store DIR]

What a local sweep does with ``budget.concurrent`` trials: each process opens its own client on the
same ``sqlite:////abs/mlflow.db`` and, as :class:`vmbench.tracking.TrialRun`, creates its run with
tags and params, logs one batch of metrics per epoch (``--steps``, ``--metrics`` each), sets a tag
now and then and ends the run. All processes pass a barrier first, so the writes collide. Then the
database is read back with plain ``sqlite3`` (not MLflow) and every expected row is counted.

MLflow 3.17 opens every SQLite session with ``PRAGMA busy_timeout = 20000``
(``mlflow/store/db/utils.py``, ``_get_managed_session_maker``): a writer that finds the database
locked waits up to 20 s for it instead of failing with "database is locked". The figure to read is
therefore the slowest write against those 20 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path


def trial(index: int, uri: str, experiment_id: str, steps: int, metrics: int, barrier, out) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    errors: list[str] = []
    latencies: list[float] = []

    def timed(call, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        except Exception as err:  # counted: what this benchmark measures
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
            return None
        finally:
            latencies.append(time.perf_counter() - start)

    barrier.wait()
    run = timed(client.create_run, experiment_id, tags={"vmbench.trial_id": f"t{index}", "vmbench.kind": "trial"},
                run_name=f"t{index}")
    if run is not None:
        run_id = run.info.run_id
        timed(client.log_batch, run_id, params=[Param(f"p{k}", str(k)) for k in range(30)])
        for step in range(1, steps + 1):
            now = int(time.time() * 1000)
            timed(client.log_batch, run_id, metrics=[Metric(f"m{k}", index + step / 1000 + k, now, step)
                                                     for k in range(metrics)])
            if step % 10 == 0:
                timed(client.set_tag, run_id, "vmbench.node", f"node{step}")
        timed(client.set_terminated, run_id, "FINISHED")
    out.put({"index": index, "errors": errors, "latencies": latencies})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--store", help="folder of the store (default: a new temporary folder)")
    args = parser.parse_args()

    from mlflow import MlflowClient

    store = Path(args.store or tempfile.mkdtemp(prefix="vmbench-sqlite-")).resolve()
    store.mkdir(parents=True, exist_ok=True)
    db = store / "mlflow.db"
    uri = f"sqlite:///{db}"
    experiment_id = MlflowClient(uri).create_experiment(f"concurrency-{time.time_ns()}")  # the driver's part

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(args.procs), ctx.Queue()
    procs = [ctx.Process(target=trial, args=(i, uri, experiment_id, args.steps, args.metrics, barrier, out))
             for i in range(args.procs)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    started = time.time()

    errors = [e for r in reports for e in r["errors"]]
    latencies = sorted(x for r in reports for x in r["latencies"])
    with sqlite3.connect(db) as con:
        runs = con.execute("SELECT run_uuid, status FROM runs WHERE experiment_id = ?", (experiment_id,)).fetchall()
        ids = [r[0] for r in runs]
        marks = ",".join("?" * len(ids))
        rows = con.execute(f"SELECT COUNT(*) FROM metrics WHERE run_uuid IN ({marks})", ids).fetchone()[0]
        steps = con.execute(f"SELECT COUNT(*) FROM (SELECT DISTINCT run_uuid, key, step FROM metrics "
                            f"WHERE run_uuid IN ({marks}))", ids).fetchone()[0]
    expected = args.procs * args.steps * args.metrics
    result = {
        "mlflow": __import__("mlflow").__version__,
        "sqlite": sqlite3.sqlite_version,
        "processes": args.procs,
        "writes": len(latencies),
        "errors": len(errors),
        "database_is_locked": sum("database is locked" in e for e in errors),
        "error_samples": sorted(set(errors))[:5],
        "runs": len(runs),
        "runs_finished": sum(status == "FINISHED" for _, status in runs),
        "metric_rows": rows,
        "metric_rows_expected": expected,
        "distinct_steps": steps,
        "write_s_median": round(statistics.median(latencies), 4) if latencies else None,
        "write_s_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 4) if latencies else None,
        "write_s_max": round(latencies[-1], 4) if latencies else None,
        "read_back_s": round(time.time() - started, 2),
        "store": str(db),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
