"""Environment variables set for a block of code and restored afterwards."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def temporary_env(key: str, value: str) -> Iterator[None]:
    """``os.environ[key] = value`` inside the block; the caller's value (or its absence) after it."""
    previous = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
