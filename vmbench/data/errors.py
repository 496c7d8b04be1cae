"""The exception type the data layer raises for bad input (defined in :mod:`vmbench.errors`).

Every message names the file, folder or field at fault, so a failed trial says what to fix.
"""

from __future__ import annotations

from vmbench.errors import DataError, few

__all__ = ["DataError", "few"]
