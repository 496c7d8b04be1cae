"""The one exception type the data layer raises for bad input.

Every message names the file, folder or field at fault, so a failed trial says what to fix.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["DataError", "few"]


class DataError(ValueError):
    """Bad or missing data: a folder, a file, a split, a protocol or a value in a file."""


def few(items: Iterable[object], k: int = 5) -> str:
    """``a, b, c (and 7 more)``: a short list for error messages."""
    items = [str(i) for i in items]
    head = ", ".join(items[:k])
    return head + (f" (and {len(items) - k} more)" if len(items) > k else "")
