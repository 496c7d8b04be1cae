"""The ``vmbench`` command: parses, calls, prints.

Every command is a module here with ``add_parsers(sub)`` and its ``cmd_*`` functions; the options
several commands share are declared once, in :mod:`vmbench.cli.options`. Errors take one path,
:func:`main`: every message meant for the user is a :class:`vmbench.errors.VmbenchError` (MLflow's
exceptions become one through :func:`vmbench.tracking.mlflow_errors`), printed as one line with
exit status 2 (``-v`` adds its traceback); any other exception is a bug or an environment failure
and keeps its traceback. Log lines go through tqdm, so they never break a progress bar.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from vmbench.errors import VmbenchError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line (its usage block is one ``--help`` away), as every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from vmbench import __version__
    from vmbench.cli import bench, data, leaderboard, models, report, run, sweep, ui

    parser = _Parser(
        prog="vmbench",
        description="Benchmark medical image segmentation models: train, tune (Ray Tune + Optuna), track (MLflow), compare.",
        epilog="Start: vmbench models; vmbench train --model unet --epochs 2 --img-size 64; vmbench leaderboard; vmbench ui",
    )
    parser.add_argument("--version", action="version", version=f"vmbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at INFO level (e.g. the scan backend chosen) and show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (run, sweep, ui, leaderboard, report, models, data, bench):  # the order of the --help list
        command.add_parsers(sub)
    return parser


def _check_tracking_uri(args: argparse.Namespace) -> None:
    """A server given with --tracking-uri that does not answer fails now, not after MLflow's retries."""
    uri = getattr(args, "tracking_uri", None)
    if uri and not getattr(args, "no_track", False) and not getattr(args, "dry_run", False):
        from vmbench.tracking.reach import check_tracking_uri

        check_tracking_uri(uri)


def _store(args: argparse.Namespace) -> str | None:
    """The MLflow store a command uses, for its error messages; None for a command without --tracking-uri."""
    if not hasattr(args, "tracking_uri"):
        return None
    from vmbench.tracking import resolve_tracking_uri

    return resolve_tracking_uri(args.tracking_uri, getattr(args, "runs_dir", None))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # MLflow logs its database migrations at INFO through its own handler
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from vmbench.tracking import mlflow_errors

    try:
        with logging_redirect_tqdm(), mlflow_errors(_store(args)):
            _check_tracking_uri(args)
            return args.func(args)
    except VmbenchError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"vmbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vmbench: interrupted", file=sys.stderr)
        return 130
