"""``vmbench report``: the HTML report of :mod:`vmbench.report` for one or more experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmbench.cli.options import tracking_options
from vmbench.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report: tables, verdicts, rank stability, curves, Pareto front, budgets",
        description=(
            "Write one HTML file (inline SVG plots, no script, nothing loaded from elsewhere) with the leaderboard "
            "tables, plain-language verdicts backed by Holm-corrected paired tests, challengeR-style rank stability, "
            "per-case distributions, learning curves, accuracy against cost, and the equal-budget audit."
        ),
    )
    tracking_options(p, "--experiment", "--tracking-uri")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples over cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--reference", default="vmunet", help="reference model of the paired tests (default vmunet; 'none' to skip)")
    p.add_argument("--budget-tolerance", type=float, default=0.10, metavar="FRACTION",
                   help="flag models whose search trials or device-hours differ by more than this fraction (default 0.10)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Writes ``--out``; every option is checked before the store is read."""
    from vmbench.report import build_report

    reference = None if (args.reference or "").lower() in ("", "none") else args.reference
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
    print(f"wrote {path}", file=sys.stderr)
    return 0
