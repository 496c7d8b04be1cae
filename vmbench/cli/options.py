"""Options and argument types shared by the commands: each bad value is one argparse error naming the option."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmbench.errors import ConfigError
from vmbench.tracking import DEFAULT_RUNS_DIR

TRACKING_OPTIONS = ("--tracking-uri", "--runs-dir", "--experiment", "--no-track")


def tracking_options(parser: argparse.ArgumentParser, *names: str, experiment: str | None = None,
                     no_track: str = "the run to MLflow") -> None:
    """Add the MLflow options ``names`` (of :data:`TRACKING_OPTIONS`) to ``parser``, in that order.

    Declared here only, so every command offers each with the same meaning and help. ``experiment``:
    the experiment the command logs to by default; None makes ``--experiment`` a repeatable filter
    of the runs the command reads (default: every experiment). ``no_track``: what ``--no-track``
    keeps out of MLflow, as its help says it: "do not log {no_track}".
    """
    unknown = sorted(set(names) - set(TRACKING_OPTIONS))
    if unknown:
        raise ValueError(f"not tracking options: {unknown}; known: {TRACKING_OPTIONS}")
    for name in names:
        if name == "--tracking-uri":
            store = "RUNS_DIR/mlflow.db" if "--runs-dir" in names else f"./{DEFAULT_RUNS_DIR}/mlflow.db"
            parser.add_argument(name, help="MLflow tracking URI: a server (http://HOST:PORT) or sqlite:///FILE "
                                f"(default: $MLFLOW_TRACKING_URI, else {store})")
        elif name == "--runs-dir":
            parser.add_argument(name, default=DEFAULT_RUNS_DIR, help="folder of the default MLflow store: "
                                f"RUNS_DIR/mlflow.db, artifacts in RUNS_DIR/mlartifacts (default {DEFAULT_RUNS_DIR})")
        elif name == "--experiment" and experiment is None:
            parser.add_argument(name, action="append", type=experiment_name,
                                help="MLflow experiment name or id to read (repeatable; default: all)")
        elif name == "--experiment":
            parser.add_argument(name, default=experiment, type=experiment_name,
                                help=f"MLflow experiment to log to (default {experiment})")
        else:
            parser.add_argument(name, action="store_true", help=f"do not log {no_track}")


def experiment_name(text: str) -> str:
    """An MLflow experiment name: not empty or blank (MLflow would refuse it deep inside a run)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected an experiment name, got {text!r}")
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A probability threshold strictly between 0 and 1 (0 or 1 would make every mask empty or full)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {value}")
    return value


def bench_device(text: str) -> str:
    """cpu, cuda or cuda:N: checked here, not by torch deep inside a benchmark."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def shape(text: str) -> tuple[int, int]:
    try:
        channels, length = (int(p) for p in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be CHANNELS:LENGTH, e.g. 768:4096") from None
    if channels < 1 or length < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: CHANNELS and LENGTH must be >= 1")
    return channels, length


def writable_folder(path: str | Path, option: str) -> Path:
    """``path`` as an output folder that can be created: checked before any work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, so the folder cannot be created")
    import os

    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {existing} is not writable")
    return path


def existing_file(path: str | Path, option: str, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{option} {path}: no such {what}")
    if not path.is_file():
        raise ConfigError(f"{option} {path}: is a folder, not a {what}")
    return path
