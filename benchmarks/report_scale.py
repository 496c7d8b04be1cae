"""Time ``vmbench report`` on a big store: search trials, final runs with per-case files, histories.

    python benchmarks/report_scale.py --runs 10000 [--db FOLDER] [--logged 300] [--search-fraction 0.83]
                                      [--per-case N] [--bootstrap 1000] [--out report.html]

Builds (or reuses) an SQLite MLflow store with ``benchmarks/leaderboard_scale.py``'s builder:
``--runs`` trial runs, ``--search-fraction`` of them search trials (a sweep of 24 trials and 5
final seeds per study is 83 % search), each with 20-epoch histories of val_dsc, train_loss and
epoch_time_s. Then writes a per-case file into the artifact folder of up to ``--per-case`` final
runs (ISIC: 600 images, Synapse: 12 cases x 8 organs, the sizes of the real test splits), and
times each stage of :func:`vmbench.report.build_report`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sqlite3
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from vmbench import tracking

ISIC_IMAGES, SYNAPSE_CASES, ORGANS = 600, 12, 8


def _scale_module():
    path = Path(__file__).resolve().parent / "leaderboard_scale.py"
    spec = importlib.util.spec_from_file_location("leaderboard_scale", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_per_case(db_path: Path, limit: int, seed: int = 0) -> int:
    """Write ``eval/per_case.csv`` into the artifact folders of up to ``limit`` final runs; returns how many."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.artifact_uri, d.value FROM runs r "
            "JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = ? AND s.value = ? "
            "JOIN tags d ON d.run_uuid = r.run_uuid AND d.key = ? LIMIT ?",
            (tracking.TAG_STAGE, tracking.STAGE_FINAL, tracking.TAG_DATASET, limit),
        ).fetchall()
    finally:
        con.close()
    rng = np.random.default_rng(seed)
    isic_ids = [f"ISIC_{i:07d}" for i in range(ISIC_IMAGES)]
    synapse_ids = np.repeat([f"case{i:04d}" for i in range(SYNAPSE_CASES)], ORGANS)
    for run_id, artifact_uri, dataset in rows:
        folder = Path(unquote(urlparse(artifact_uri).path)) / Path(tracking.PER_CASE_ARTIFACT).parent
        folder.mkdir(parents=True, exist_ok=True)
        if dataset == "synapse":
            dice = rng.beta(8, 2, len(synapse_ids))
            frame = pd.DataFrame({"id": synapse_ids, "class": np.tile(np.arange(1, ORGANS + 1), SYNAPSE_CASES),
                                  "dice": dice, "hd95": rng.gamma(2, 10, len(synapse_ids))})
        else:
            dice = rng.beta(9, 2, ISIC_IMAGES)
            frame = pd.DataFrame({"id": isic_ids, "dice": dice, "iou": dice / (2 - dice), "acc": 0.95})
        frame.to_csv(folder / Path(tracking.PER_CASE_ARTIFACT).name, index=False)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time vmbench report on a big synthetic store.")
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--db", help="folder of the SQLite store (reused if it holds the runs)")
    parser.add_argument("--logged", type=int, default=300, help="runs logged through MLflow; the rest SQL copies")
    parser.add_argument("--search-fraction", type=float, default=0.83)
    parser.add_argument("--per-case", type=int, default=100000, help="final runs given a per-case file (default all)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=None, help="report file (default: in the store's folder)")
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    db_path = Path(args.db or tempfile.mkdtemp(prefix="vmbench-report-bench-")) / "mlflow.db"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    uri = _scale_module().build_store(db_path, args.runs, args.logged, args.search_fraction)
    print(f"store built in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    n = write_per_case(db_path, args.per_case)
    print(f"per-case files written for {n} final runs in {time.perf_counter() - t0:.1f} s")

    from vmbench.report.collect import collect
    from vmbench.report.page import render_page

    t0, c0 = time.perf_counter(), time.process_time()
    data = collect(uri, n_boot=args.bootstrap)
    t_collect, c_collect = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    page = render_page(data)
    t_render, c_render = time.perf_counter() - t0, time.process_time() - c0
    out = Path(args.out or db_path.parent / "report.html")
    out.write_text(page)
    for stage, seconds in data.timings.items():
        print(f"  {stage}: {seconds:.2f} s")
    print(f"collect (reading {data.runs_read} runs, per-case files, histories): {t_collect:.1f} s wall, "
          f"{c_collect:.1f} s CPU; render (figures, HTML): {t_render:.1f} s wall, {c_render:.1f} s CPU; "
          f"report {out} {len(page.encode()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
