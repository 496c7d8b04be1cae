"""``vmbench leaderboard``: the comparison tables of :mod:`vmbench.leaderboard`, to a terminal or a file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from vmbench import tracking
from vmbench.cli.options import tracking_options
from vmbench.errors import ConfigError, DataError
from vmbench.io import atomic_write
from vmbench.leaderboard.board import TESTED_STAGES, leaderboard
from vmbench.leaderboard.budget import audit_store
from vmbench.leaderboard.columns import MEASURED
from vmbench.leaderboard.plot import check_plot_path, plot
from vmbench.leaderboard.rankings import rankings
from vmbench.leaderboard.render import FORMATS, render, render_rankings
from vmbench.leaderboard.terminal import print_rankings_terminal, print_terminal
from vmbench.leaderboard.store import MlflowPerCaseLoader, as_list, load_runs
from vmbench.leaderboard.tables import split_tables

_SUFFIX_FORMATS = {".md": "md", ".markdown": "md", ".csv": "csv", ".html": "html", ".htm": "html", ".tex": "latex", ".json": "json", ".txt": "text"}


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="comparison tables (mean ± std, 95%% CI, Holm-corrected paired Wilcoxon, cost, ranks) from the MLflow final runs",
        description=(
            "One table per dataset and protocol from the final runs (vmbench.stage=final, FINISHED) in MLflow: "
            "mean ± std and a range-respecting 95% CI over seeds (protocol cv: over folds x seeds), failed-run "
            "counts, parameters, GMACs, training time, latency, a paired Wilcoxon test of per-case DSC against "
            "--reference with Holm's correction, an equal-budget check of the search, the published rows of the "
            "registry, a transfer table per dataset the runs were also scored on without retraining (a search space's "
            "transfer: key, vmbench evaluate --dataset) and, with --ranks, rankings with their bootstrap stability."
        ),
    )
    tracking_options(p, "--tracking-uri", "--experiment")
    p.add_argument("--dataset", action="append", help="dataset tag (repeatable or comma-separated)")
    p.add_argument("--protocol", action="append", help=(
        "protocol tag: holdout, paper (repeatable); the published-only paper-p2 table (TransFuse P2) is shown "
        "unless --protocol is given without paper-p2"))
    p.add_argument("--model", action="append", help="model tag (repeatable or comma-separated)")
    p.add_argument(
        "--stage", choices=["final", "single", "search", "all"], default="final",
        help=(
            "run stage (default final: a sweep's retrained best configurations, or, when there are none, single "
            "`vmbench train` runs; single: only those; search: trials with their val_* metrics, for inspection only; "
            "all: every stage's test_* metrics, which only final runs log, so the counts are of final runs)"
        ),
    )
    p.add_argument("--reference", default="vmunet", help="reference model of the paired test (default vmunet; 'none' to skip)")
    p.add_argument("--no-published", action="store_true", help="leave out the registry's published rows")
    p.add_argument("--no-wilcoxon", action="store_true", help="skip the paired test (no per-case downloads)")
    p.add_argument("--metrics", help="comma-separated metric keys to show, e.g. dsc,hd95,hd95_liver (default: per dataset)")
    p.add_argument("--columns", help=(
        "comma-separated columns after the model, in order (md, csv, html, latex, text): metric keys (dsc, miou, "
        "hd95 ...: mean ± std), METRIC_ci (its 95%% CI), n, folds, failed, p, p_holm, pairs, delta, own_dsc "
        "(transfer tables: the runs' own test DSC), params, gmacs, "
        "train_h, device_h, latency, source; e.g. dsc,miou,hd95,params,gmacs (default: every column; latex: "
        "n, the metrics, dsc_ci, p_holm, params, gmacs)"))
    p.add_argument("--format", choices=list(FORMATS), help=(
        "output format (default: terminal; with --out, from the file suffix)"))
    p.add_argument("--out", help="write to FILE (atomically) instead of standard output")
    p.add_argument("--wide", action="store_true", help="terminal format: every column, however wide")
    p.add_argument("--plot", metavar="FILE.png", help="also write a PNG: DSC bars per model and DSC against GMACs")
    p.add_argument("--ranks", action="store_true", help=(
        "also rank the models per dataset on the per-case tables: challengeR's three schemes, bootstrap rank "
        "stability and a consensus rank over datasets (formats terminal, md, text, html, json)"))
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of --ranks (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --ranks bootstrap (default 0)")
    p.add_argument("--budget-tolerance", type=float, default=0.10, metavar="FRACTION", help=(
        "flag tables whose models' search trials or device-hours differ by more than this fraction of the "
        "largest (default 0.10)"))
    p.add_argument("--no-budget", action="store_true", help="skip the equal-budget audit (reads the search trials)")
    p.set_defaults(func=cmd_leaderboard)


def _output_format(args: argparse.Namespace) -> str:
    """--format, else the --out file's suffix; an unknown suffix is an error rather than a guess."""
    fmt = args.format
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a folder; give a file name, e.g. {Path(args.out) / 'leaderboard.md'}")
    if fmt is None and args.out:
        suffix = Path(args.out).suffix.lower()
        if suffix not in _SUFFIX_FORMATS:
            raise ConfigError(f"--out {args.out}: unknown suffix {suffix or '(none)'!r}; use one of "
                              f"{', '.join(sorted(_SUFFIX_FORMATS))} or give --format")
        fmt = _SUFFIX_FORMATS[suffix]
    fmt = fmt or "terminal"
    return "text" if fmt == "terminal" and args.out else fmt


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Tables to standard output or ``--out``; every option is checked before the store is read."""
    fmt = _output_format(args)
    if args.plot:
        check_plot_path(args.plot)
    stage = None if args.stage == "all" else args.stage
    reference = None if (args.reference or "").lower() in ("", "none") else args.reference
    ranks = None
    _check_options(args, fmt, stage)
    filters = dict(experiment=args.experiment, dataset=args.dataset, protocol=args.protocol, model=args.model)
    runs = load_runs(args.tracking_uri, stage=args.stage, **filters)
    if runs.empty and args.stage == "final":  # a first `vmbench train`, no sweep yet: show that run
        single = load_runs(args.tracking_uri, stage=tracking.STAGE_SINGLE, **filters)
        if not single.empty:
            print("(no sweep final runs match; showing single `vmbench train` runs: one run per seed, not tuned)",
                  file=sys.stderr)
            runs, stage = single, tracking.STAGE_SINGLE
    budget = None if (args.no_budget or stage != "final") else audit_store(args.tracking_uri, **filters)
    loader = None if runs.empty else MlflowPerCaseLoader(runs.attrs["tracking_uri"], artifact_uris=_artifact_uris(runs))
    board = leaderboard(
        runs, reference=reference, metrics=as_list(args.metrics) or None, with_published=not args.no_published,
        per_case_loader=False if (args.no_wilcoxon or stage not in TESTED_STAGES) else loader,
        stage=stage, published_models=as_list(args.model) or None,
        published_protocols=as_list(args.protocol) or None, budget=budget, budget_tolerance=args.budget_tolerance,
    )
    if args.ranks and not runs.empty:
        ranks = rankings(runs, per_case_loader=loader, n_boot=args.bootstrap, seed=args.seed, stage=stage)
    empty = _nothing_to_show(board, runs.attrs.get("description", ""))
    if empty:
        raise DataError(empty)
    if fmt == "terminal":
        print_terminal(board, wide=args.wide)
        if ranks is not None:
            print_rankings_terminal(ranks)
    else:
        text = _with_ranks(render(board, fmt, columns=as_list(args.columns) or None), ranks, fmt)
        if args.out:
            atomic_write(args.out, text)
            print(f"wrote {args.out} ({fmt}, {len(split_tables(board))} tables)", file=sys.stderr)
        else:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.plot:
        plot(board, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _check_options(args: argparse.Namespace, fmt: str, stage: str | None) -> None:
    if args.columns and fmt in ("terminal", "json"):
        raise ConfigError(f"--columns with --format {fmt}: use md, csv, html, latex or text (json keeps every column)")
    if args.ranks and fmt not in ("terminal", "md", "text", "html", "json"):
        raise ConfigError(f"--ranks with --format {fmt}: use terminal, md, text, html or json")
    if args.ranks and stage not in TESTED_STAGES:
        raise ConfigError("--ranks ranks runs on their test cases: leave out --stage, or use --stage final or single")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap {args.bootstrap}: expected 0 or more resamples")
    if not 0 <= args.budget_tolerance < 1:
        raise ConfigError(f"--budget-tolerance {args.budget_tolerance}: expected a fraction in [0, 1)")


def _artifact_uris(runs: pd.DataFrame) -> dict[str, str]:
    return dict(zip(runs["run_id"], runs["artifact_uri"])) if "artifact_uri" in runs.columns else {}


def _with_ranks(text: str, ranks, fmt: str) -> str:
    """The leaderboard's text with the rankings after it (json: a "rankings" entry)."""
    if ranks is None:
        return text
    if fmt == "json":
        payload = json.loads(text)
        payload["rankings"] = json.loads(render_rankings(ranks, "json"))
        return json.dumps(payload, indent=2, ensure_ascii=False)
    extra = render_rankings(ranks, fmt)
    if fmt == "html":
        return text.replace("</body></html>", extra + "\n</body></html>")
    return text.rstrip("\n") + "\n\n" + extra


def _nothing_to_show(board: pd.DataFrame, where: str) -> str | None:
    """Why no table can be shown (no finished runs matched, and what did), else None."""
    measured = board[board["kind"] == MEASURED] if not board.empty else board
    if not measured.empty and int(measured["n"].sum()) > 0:
        return None
    failed, running, pruned = (int(measured[c].sum()) if not measured.empty else 0 for c in ("failed", "running", "pruned"))
    extra = f" ({failed} failed/killed and {running} unfinished runs matched)" if failed or running else ""
    if pruned:
        extra += f" ({pruned} ASHA-stopped trials left out)"
    aside = sum((board.attrs.get("set_aside") or {}).values())
    if aside:
        extra += f" ({aside} runs of stages without {board.attrs.get('prefix')}* metrics left out: try --stage search)"
    return f"no finished vmbench runs found for {where}{extra}"
