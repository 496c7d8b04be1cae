"""The terminal leaderboard printed at the end of ``vmbench sweep``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from vmbench.errors import VmbenchError
from vmbench.leaderboard.board import leaderboard
from vmbench.leaderboard.budget import audit_store
from vmbench.leaderboard.columns import MEASURED
from vmbench.leaderboard.terminal import print_terminal
from vmbench.leaderboard.store import load_runs
from vmbench.tracking import resolve_tracking_uri

log = logging.getLogger(__name__)


def print_for_sweep(
    tracking_uri: str | None, experiment: str, runs_dir: str | Path | None = None, file=None,
    reference: str | None = "vmunet",
) -> bool:
    """The terminal leaderboard of one sweep's experiment, printed after ``vmbench sweep``.

    Never raises: a sweep that trained for hours must not end in a leaderboard traceback. A
    problem is one line; an unexpected error (a bug) also logs its traceback. Returns whether a
    table was printed.
    """
    file = file or sys.stdout
    try:
        uri = resolve_tracking_uri(tracking_uri, runs_dir)
        board = leaderboard(load_runs(uri, experiment=experiment), reference=reference,
                            budget=audit_store(uri, experiment=experiment))
        measured = board[board["kind"] == MEASURED] if not board.empty else board
        if measured.empty:
            print(f"(leaderboard: no final runs in experiment {experiment!r} at {uri})", file=file)
            return False
        print_terminal(board, file=file)
        print(f"(vmbench leaderboard --tracking-uri {uri} --experiment {experiment} for other formats)", file=file)
        return True
    except Exception as err:  # noqa: BLE001 - the sweep's results are saved; see the docstring
        if not isinstance(err, VmbenchError):
            log.warning("leaderboard after the sweep failed", exc_info=True)
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"(leaderboard failed: {type(err).__name__}: {first})", file=file)
        return False
