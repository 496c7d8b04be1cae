"""``vmbench sweep``."""

from __future__ import annotations

import argparse

from vmbench.cli.options import positive_float, positive_int, tracking_options


def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="tune models with Ray Tune + Optuna + ASHA, then retrain the best per seed")
    p.add_argument("--space", required=True, help="search-space YAML (see search_spaces/)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and plan, run nothing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    p.add_argument("--name", help="sweep name (default: the file's name field or stem)")
    tracking_options(p, "--tracking-uri", "--runs-dir")
    p.add_argument("--storage-path", help="Ray Tune storage (shared: NFS path or s3://...) for clusters "
                   "(default: the file's storage_path, else RUNS_DIR/ray)")
    p.add_argument("--address", help="attach to a running Ray cluster: auto or HOST:PORT (default: start one here)")
    p.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray instance")
    p.add_argument("--num-gpus", type=positive_float, help="GPUs of the local Ray instance")
    p.add_argument("--no-leaderboard", action="store_true",
                   help="do not print the leaderboard nor write the HTML report (RUNS_DIR/sweeps/NAME/report.html) "
                   "at the end")
    p.set_defaults(func=cmd_sweep)


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

    sweep = run_sweep(
        spec, tracking_uri=args.tracking_uri, runs_dir=args.runs_dir, storage_path=args.storage_path,
        resume=args.resume, address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
    )
    failed = 0
    for outcome in sweep.studies:
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

        leaderboard.print_for_sweep(sweep.tracking_uri, spec.experiment, reference=sweep.reference)
        # The report: beside the sweep's files, and on its parent MLflow run (opens from the UI).
        report_for_sweep(sweep, sweep.sweep_dir / "report.html")
    return 1 if failed else 0
