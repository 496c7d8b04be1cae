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
import errno
import logging
import os
import signal
import sys
import threading
import traceback

from vmbench.errors import Interrupted, VmbenchError, clear_stop, request_stop, stop_requested

__all__ = ["READ_ONLY_COMMANDS", "build_parser", "main", "user_error"]


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


# Commands that only read the MLflow store: they open it read-only and never create or migrate it.
READ_ONLY_COMMANDS = ("leaderboard", "report", "ui")


def _check_tracking_uri(args: argparse.Namespace) -> None:
    """The store a command will use, checked before any work: a server that does not answer fails now,
    not after MLflow's retries, whether it came from --tracking-uri or MLFLOW_TRACKING_URI; a command
    that only reads gets a SQLite file only if it is an MLflow store (looked at read-only)."""
    if not hasattr(args, "tracking_uri") or getattr(args, "no_track", False) or getattr(args, "dry_run", False):
        return
    from vmbench.tracking.reach import check_tracking_uri

    uri, source = args.tracking_uri, "--tracking-uri"
    if not uri and os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    read_only = args.command in READ_ONLY_COMMANDS
    if uri:
        check_tracking_uri(uri, source=source, read_only=read_only)
    if read_only:
        from vmbench.tracking.store import check_store_readable

        check_store_readable(_store(args))


def _store(args: argparse.Namespace) -> str | None:
    """The MLflow store a command uses, for its error messages; None for a command without --tracking-uri."""
    if not hasattr(args, "tracking_uri"):
        return None
    from vmbench.tracking import resolve_tracking_uri

    return resolve_tracking_uri(args.tracking_uri, getattr(args, "runs_dir", None))


# OS errors a user can act on, by errno: one line naming the file. Others keep their traceback.
_OS_REASONS = {
    errno.ENOSPC: "no space left on the device (disk full); free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EFBIG: "file too large for this system's file-size limit (ulimit -f?)",
    errno.EROFS: "read-only file system; write elsewhere",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long; use a shorter path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error (a failing disk or network file system?)",
    errno.EMFILE: "too many open files (ulimit -n)",
}


def user_error(err: BaseException, store: str | None = None, target: str | None = None) -> str | None:
    """The one-line message for an error of a class the user can act on, else None (a bug: traceback).

    The one place where exceptions are mapped by class: vmbench's own errors, OS errors by errno,
    database errors (a corrupted or truncated SQLite store). ``target``: what the command writes
    (e.g. ``--out DIR``), named when a library's OS error does not say which file failed.
    """
    if isinstance(err, VmbenchError):
        return str(err)
    if isinstance(err, OSError) and err.errno in _OS_REASONS:
        files = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        return f"{files or (f'writing {target}' if target else 'a file')}: {_OS_REASONS[err.errno]}"
    database_errors = tuple(cls for cls in (_class("sqlite3", "DatabaseError"), _class("sqlalchemy.exc", "SQLAlchemyError"))
                            if cls is not None)
    if database_errors and isinstance(err, database_errors):
        first = next((line.strip() for line in str(getattr(err, "orig", None) or err).splitlines() if line.strip()),
                     type(err).__name__)
        where = f"MLflow store {store}" if store else "the database"
        if "full" in first or "readonly" in first or "read-only" in first or "locked" in first:
            return f"{where}: database error ({first})"
        return f"{where}: database error ({first}); the file is damaged or not a store: restore it or use another"
    return None


def _target(args: argparse.Namespace) -> str | None:
    """What a command writes, for an OS error that does not name its file."""
    for option in ("out", "runs_dir"):
        value = getattr(args, option, None)
        if value:
            return f"--{option.replace('_', '-')} {value}"
    return None


def _class(module: str, name: str):
    """``module.name`` if that module is loaded already (importing it here would cost seconds)."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def _install_signal_handlers() -> dict[int, object]:
    """SIGINT and SIGTERM become :class:`Interrupted` in the main thread (one handler for both, so
    every ``except KeyboardInterrupt`` that marks a run KILLED serves ``kill``, ``timeout``, ``scancel``
    and ``docker stop`` too). A second signal while stopping ends the process at once."""
    def on_signal(signum, frame):
        if stop_requested() is not None:  # already stopping (marking runs KILLED): the user insists
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        request_stop(signum)
        raise Interrupted(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    return previous


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # MLflow logs its database migrations at INFO through its own handler
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # ... and resets that level when it is imported, except to what this variable says.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from vmbench.tracking import mlflow_errors

    clear_stop()
    previous = _install_signal_handlers()
    store = None
    try:
        store = _store(args)
        with logging_redirect_tqdm(), mlflow_errors(store):
            _check_tracking_uri(args)
            return args.func(args)
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else stop_requested() or signal.SIGINT
        if args.verbose:
            traceback.print_exc()
        print(f"vmbench: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except Exception as err:
        message = user_error(err, store, _target(args))
        if message is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"vmbench: error: {message}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
