"""MLflow's exceptions as vmbench's one-line errors, so that no command imports MLflow to report them."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from vmbench.errors import VmbenchError

__all__ = ["TrackingError", "mlflow_errors"]


class TrackingError(VmbenchError, RuntimeError):
    """The MLflow store refused or failed a request: names the store and MLflow's reason."""


@contextmanager
def mlflow_errors(store: str | None = None) -> Iterator[None]:
    """Turn an ``MlflowException`` raised inside into a one-line :class:`TrackingError` naming ``store``
    (the tracking URI; None where it is not known). Every other exception passes unchanged."""
    try:
        yield
    except Exception as err:
        # Not imported yet means not raised by MLflow, and importing MLflow here would cost seconds.
        exceptions = sys.modules.get("mlflow.exceptions")
        if exceptions is None or not isinstance(err, exceptions.MlflowException):
            raise
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise TrackingError(f"MLflow store {store}: {first}" if store else f"MLflow: {first}") from err
