"""Harness overhead of a sweep (Ray Tune + Optuna + ASHA + MLflow) against calling ``fit`` directly.

Runs a one-study sweep with one trial at a time (ASHA's grace period = the whole budget, so no
trial is cut short), then trains exactly the configurations the sweep sampled with
``vmbench.engine.fit`` in this process, same thread count, and prints both side by side:

    python benchmarks/sweep_overhead.py [--trials 3] [--epochs 3] [--img-size 96] [--model unet]

The search phase is timed from the sweep's parent run start to the start of its first final
run (Ray start-up excluded, driver-side Optuna/ASHA/experiment bookkeeping included).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vmbench-overhead-"))
    os.environ.setdefault("VMBENCH_CACHE", str(work / "cache"))
    import mlflow
    import torch

    from vmbench import tracking as T
    from vmbench.engine import fit
    from vmbench.search_space import parse_spec
    from vmbench.sweep import run_sweep

    spec = parse_spec(
        {
            "experiment": "overhead",
            "name": "overhead",
            "model": args.model,
            "dataset": "synthetic-isic",
            "budget": {"trials": args.trials, "concurrent": 1, "max_epochs": args.epochs,
                       "grace_period": args.epochs, "reduction_factor": 2},
            "resources": {"cpu": args.threads, "gpu": 0},
            "fixed": {"data": {"img_size": args.img_size}, "train": {"batch_size": 16}},
            "space": {"optim.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3}},
            "final": {"seeds": [1]},
            "sampler": {"name": "random", "seed": 0},
        },
        source="sweep_overhead.py",
    )
    runs_dir = work / "runs"
    started = time.perf_counter()
    run_sweep(spec, runs_dir=runs_dir, num_cpus=args.threads)
    total_sweep = time.perf_counter() - started

    mlflow.set_tracking_uri(T.resolve_tracking_uri(None, runs_dir))  # where run_sweep logged
    df = mlflow.search_runs(experiment_names=["overhead"])
    parent = df[df[f"tags.{T.TAG_KIND}"] == T.KIND_SWEEP].iloc[0]
    trials = df[df[f"tags.{T.TAG_STAGE}"] == T.STAGE_SEARCH].sort_values("start_time")
    finals = df[df[f"tags.{T.TAG_STAGE}"] == T.STAGE_FINAL]
    search_phase = (finals["start_time"].min() - parent["start_time"]).total_seconds()
    run_durations = [(r.end_time - r.start_time).total_seconds() for r in trials.itertuples()]

    torch.set_num_threads(args.threads)
    direct = []
    for i, lr in enumerate(trials["params.optim.lr"].astype(float)):
        cfg = spec.studies[0].base.with_overrides({"optim.lr": lr})
        t0 = time.perf_counter()
        fit(cfg, work / f"direct{i}", evaluate_test=False)
        direct.append(time.perf_counter() - t0)

    print(f"\n{args.trials} trials of {args.model} at {args.img_size}px, {args.epochs} epochs, {args.threads} thread(s)")
    print(f"{'trial':>5} {'fit() s':>9} {'MLflow run s':>13} {'run/fit':>8}")
    for i, (d, r) in enumerate(zip(direct, run_durations)):
        print(f"{i:>5} {d:>9.1f} {r:>13.1f} {r / d:>8.3f}")
    total_direct = sum(direct)
    print(f"search phase in the harness: {search_phase:.1f} s; the same fits called directly: {total_direct:.1f} s")
    print(f"harness overhead: {(search_phase - total_direct) / total_direct:+.1%} "
          f"({(search_phase - total_direct) / len(direct):.1f} s per trial); whole sweep incl. Ray start and "
          f"final stage: {total_sweep:.1f} s")


if __name__ == "__main__":
    main()
