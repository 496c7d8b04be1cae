"""The errors vmbench raises for its users.

A :class:`VmbenchError` carries a complete, one-line message meant for the person running vmbench:
it names the file, folder, field or option at fault and what to do. The command line prints it
as one line (``-v`` adds the traceback). Every other exception is a bug or an environment failure
(CUDA, out of memory, a library's own error) and keeps its traceback.

The subclasses also derive from the built-in type callers have always caught (``ValueError``,
``RuntimeError``, ``KeyError``), so ``except ValueError`` around a config check still works.
"""

from __future__ import annotations

from typing import Iterable

__all__ = [
    "BackendUnavailableError",
    "clear_stop",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "ModelInputError",
    "PreflightError",
    "TrainingDivergedError",
    "UnknownAblationError",
    "UnknownNameError",
    "VmbenchError",
    "few",
    "raise_if_stopped",
    "request_stop",
    "stop_requested",
]


class VmbenchError(Exception):
    """A problem in what the user gave vmbench (or in their environment), explained in one line."""


class ConfigError(VmbenchError, ValueError):
    """A configuration value is missing, unknown or of the wrong type; names the key and its source."""


class DataError(VmbenchError, ValueError):
    """Bad or missing data: a folder, a file, a split, a protocol or a value in a file."""


class CheckpointError(VmbenchError, RuntimeError):
    """A checkpoint or weight file cannot be read safely or does not hold what was expected."""


class ModelInputError(VmbenchError, ValueError):
    """A model cannot take an input of this size or channel count."""


class BackendUnavailableError(VmbenchError, RuntimeError):
    """An explicitly requested compute backend (scan kernel, device) is not available here."""


class PreflightError(VmbenchError, RuntimeError):
    """A sweep cannot run as configured (resources, data, names); says why and what to change."""


class TrainingDivergedError(VmbenchError, RuntimeError):
    """The loss became NaN or infinite: a property of the configuration (learning rate, data)."""


class UnknownNameError(VmbenchError, KeyError):
    """A model, dataset or other name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownAblationError(UnknownNameError):
    """A model-name suffix ``~<ablation>`` that is unknown or names a model with no Mamba part."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked vmbench to stop. A KeyboardInterrupt, so every ``except
    KeyboardInterrupt`` that marks a run KILLED handles SIGTERM too; exit status 128 + ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        import signal

        return f"stopped by {signal.Signals(self.signum).name}"


# The signal that asked this process to stop, for loops (the sweep's Ray Tune run) that catch the
# exception themselves and must check after they return. Set by the command line's handler.
_stop: list[int] = []


def request_stop(signum: int) -> None:
    if not _stop:
        _stop.append(signum)


def clear_stop() -> None:
    """Forget a stop request (the command line, at the start of each command run in one process)."""
    _stop.clear()


def stop_requested() -> int | None:
    """The signal number that asked vmbench to stop, or None."""
    return _stop[0] if _stop else None


def raise_if_stopped() -> None:
    if _stop:
        raise Interrupted(_stop[0])


def few(items: Iterable[object], k: int = 5) -> str:
    """``a, b, c (and 7 more)``: a short list for error messages."""
    items = [str(i) for i in items]
    head = ", ".join(items[:k])
    return head + (f" (and {len(items) - k} more)" if len(items) > k else "")
