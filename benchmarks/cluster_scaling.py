"""What a 2-node sweep costs against a 1-node sweep: the same sweep through ``ray job submit`` on
a local multi-node cluster (head + N worker nodes, 1 CPU each) with 1 and then 2 workers.

    python benchmarks/cluster_scaling.py [--trials 4] [--epochs 2] [--img-size 64]

Prints wall time of the job, search trials per hour, and the ratio. On one machine the workers
share its cores, so this measures the harness's scaling, not extra hardware.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--model", default="unet")
    args = parser.parse_args()

    from vmbench.data import build_dataset
    from localcluster import LocalCluster  # this folder's helper, next to this script

    work = Path(tempfile.mkdtemp(prefix="vmbench-scaling-"))
    cache = work / "cache"
    os.environ["VMBENCH_CACHE"] = str(cache)
    build_dataset("synthetic-isic", split="train", img_size=args.img_size)  # generated once, outside the timing
    space = {
        "experiment": "scaling",
        "name": "scaling",
        "model": args.model,
        "dataset": "synthetic-isic",
        "budget": {"trials": args.trials, "concurrent": 2, "max_epochs": args.epochs,
                   "grace_period": args.epochs, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "fixed": {"data": {"img_size": args.img_size}, "train": {"batch_size": 16}},
        "space": {"optim.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3}},
        "final": {"seeds": [1]},
        "sampler": {"name": "random", "seed": 0},
    }
    path = work / "scaling.yaml"
    path.write_text(yaml.safe_dump(space))
    rows = []
    for workers in (1, 2):
        with LocalCluster(workers=workers, cpus_per_worker=1, work_dir=work / f"{workers}nodes",
                          env={"VMBENCH_CACHE": str(cache)}) as cluster:
            start = time.perf_counter()
            cluster.submit_sweep(path, "--no-leaderboard", env={"VMBENCH_CACHE": str(cache)})
            wall = time.perf_counter() - start
        rows.append((workers, wall, args.trials / wall * 3600))
    print(f"\n{args.trials} trials of {args.model} ({args.epochs} epochs at {args.img_size}px) + 1 final run, "
          "via ray job submit")
    print(f"{'worker nodes':>12} {'wall s':>8} {'trials/hour':>12}")
    for workers, wall, rate in rows:
        print(f"{workers:>12} {wall:>8.1f} {rate:>12.1f}")
    print(f"2 nodes vs 1: {rows[0][1] / rows[1][1]:.2f}x faster")


if __name__ == "__main__":
    main()
