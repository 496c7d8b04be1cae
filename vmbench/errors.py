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
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelInputError",
    "PreflightError",
    "TrainingDivergedError",
    "UnknownNameError",
    "VmbenchError",
    "few",
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


def few(items: Iterable[object], k: int = 5) -> str:
    """``a, b, c (and 7 more)``: a short list for error messages."""
    items = [str(i) for i in items]
    head = ", ".join(items[:k])
    return head + (f" (and {len(items) - k} more)" if len(items) > k else "")
