"""``vmbench sweep`` and ``vmbench ui``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmbench.cli.options import port, positive_float, positive_int


def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="tune models with Ray Tune + Optuna + ASHA, then retrain the best per seed")
    p.add_argument("--space", required=True, help="search-space YAML (see search_spaces/)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and plan, run nothing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    p.add_argument("--name", help="sweep name (default: the file's name field or stem)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or vmbench-runs/mlflow.db)")
    p.add_argument("--runs-dir", default="vmbench-runs", help="local folder for the default store and runs")
    p.add_argument("--storage-path", help="Ray Tune storage (shared: NFS path or s3://...) for clusters")
    p.add_argument("--address", help="attach to a running Ray cluster: auto or HOST:PORT (default: start one here)")
    p.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray instance")
    p.add_argument("--num-gpus", type=positive_float, help="GPUs of the local Ray instance")
    p.add_argument("--no-leaderboard", action="store_true",
                   help="do not print the leaderboard nor write the HTML report at the end")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("ui", help="the MLflow UI over vmbench's runs (127.0.0.1, a free port)")
    p.add_argument("--tracking-uri", help="default $MLFLOW_TRACKING_URI or vmbench-runs/mlflow.db")
    p.add_argument("--runs-dir", default="vmbench-runs")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=port, help="default: a free port")
    p.add_argument("--allowed-hosts", help="Host headers to accept when served under a DNS name (MLflow option)")
    p.add_argument("--no-auth", action="store_true", help="serve a non-loopback --host WITHOUT a login: every run, "
                   "read and write, to anyone who can reach it (default: a login, user admin, password from "
                   "$VMBENCH_UI_PASSWORD or printed once)")
    p.set_defaults(func=cmd_ui)


def cmd_sweep(args: argparse.Namespace) -> int:
    from vmbench.search_space import check_name, check_study_inputs, load_spec

    spec = load_spec(args.space)
    if args.name is not None:
        # The same rule as the file's name field: it becomes folder names and MLflow filters.
        spec.name = check_name(args.name, "--name")
    check_study_inputs(spec)  # a size a model cannot take fails here, not in every trial
    if args.dry_run:
        print(spec.plan())
        return 0
    from vmbench.sweep import run_sweep

    outcomes = run_sweep(
        spec, tracking_uri=args.tracking_uri, runs_dir=args.runs_dir, storage_path=args.storage_path,
        resume=args.resume, address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
    )
    failed = 0
    for outcome in outcomes:
        finished = sum(f["status"] == "FINISHED" for f in outcome.final)
        failed += len(outcome.final) - finished
        print(
            f"{outcome.study}: best {spec.metric} {outcome.best_value:.4f} with {outcome.best}; "
            f"{outcome.trials['total']} trials ({outcome.trials['errors']} failed); "
            f"final runs {finished}/{len(outcome.final)}"
        )
    if not args.no_leaderboard:
        from vmbench import leaderboard
        from vmbench.report import report_for_sweep

        leaderboard.print_for_sweep(args.tracking_uri, spec.experiment, runs_dir=args.runs_dir)
        # The report: beside the sweep's files, and on its parent MLflow run (opens from the UI).
        report_for_sweep(args.tracking_uri, spec.experiment, spec.name,
                         Path(args.runs_dir) / "sweeps" / spec.name / "report.html", runs_dir=args.runs_dir)
    return 1 if failed else 0


def cmd_ui(args: argparse.Namespace) -> int:
    from vmbench.ui import serve

    return serve(args.tracking_uri, args.runs_dir, args.host, args.port, args.allowed_hosts, no_auth=args.no_auth)
