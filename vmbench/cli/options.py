"""Argument types shared by the commands: each bad value is one argparse error naming the option."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmbench.errors import ConfigError


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
