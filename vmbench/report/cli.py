"""``vmbench report``: the HTML report of one or more experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmbench.errors import ConfigError, VmbenchError
from vmbench.tracking import resolve_tracking_uri


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML report: tables, verdicts, rank stability, curves, Pareto front, budgets",
        description=(
            "Write one HTML file (inline SVG plots, no script, nothing loaded from elsewhere) with the leaderboard "
            "tables, plain-language verdicts backed by Holm-corrected paired tests, challengeR-style rank stability, "
            "per-case distributions, learning curves, accuracy against cost, and the equal-budget audit."
        ),
    )
    p.add_argument("--experiment", action="append", help="MLflow experiment name or id (repeatable; default: all)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./vmbench-runs/mlflow.db)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples over cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--reference", default="vmunet", help="reference model of the paired tests (default vmunet; 'none' to skip)")
    p.add_argument("--budget-tolerance", type=float, default=0.10, metavar="FRACTION",
                   help="flag models whose search trials or device-hours differ by more than this fraction (default 0.10)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """The sub-command: writes ``--out``; a problem is one line on standard error and status 1."""
    from mlflow.exceptions import MlflowException

    from vmbench.report import build_report

    reference = None if (args.reference or "").lower() in ("", "none") else args.reference
    try:
        out = Path(args.out)
        if out.is_dir():
            raise ConfigError(f"--out {out}: is a folder; give a file name, e.g. {out / 'report.html'}")
        if out.suffix.lower() not in (".html", ".htm"):
            raise ConfigError(f"--out {out}: the report is HTML; give a file name ending in .html")
        if args.bootstrap < 0:
            raise ConfigError(f"--bootstrap {args.bootstrap}: expected 0 or more resamples")
        if not 0 <= args.budget_tolerance < 1:
            raise ConfigError(f"--budget-tolerance {args.budget_tolerance}: expected a fraction in [0, 1)")
        path = build_report(args.tracking_uri, args.experiment, args.out, reference=reference,
                            n_boot=args.bootstrap, seed=args.seed, budget_tolerance=args.budget_tolerance)
    except VmbenchError as err:
        print(f"vmbench report: {err}", file=sys.stderr)
        return 1
    except MlflowException as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"vmbench report: cannot read runs from {resolve_tracking_uri(args.tracking_uri)}: {first}", file=sys.stderr)
        return 1
    print(f"wrote {path}", file=sys.stderr)
    return 0
