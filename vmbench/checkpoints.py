"""Safe checkpoint reading shared by every model loader and the engine.

Files are read with ``torch.load(..., weights_only=True)`` only. A file that pickles Python
objects is refused with an explanation and never retried unsafely (unpickling can run arbitrary
code); a caller who trusts such a file loads it and passes the resulting dict instead of a path.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch

from vmbench.errors import CheckpointError

__all__ = ["CheckpointFormatError", "describe", "is_state_dict", "read_checkpoint"]


class CheckpointFormatError(CheckpointError):
    """A checkpoint cannot be read safely or does not hold what was expected."""


def describe(source: Any) -> str:
    """How messages name a checkpoint: its path, or the type of an in-memory dict."""
    return f"'{source}'" if isinstance(source, (str, PathLike)) else f"<in-memory {type(source).__name__}>"


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(source: str | PathLike[str] | Mapping[str, Any], map_location: Any = "cpu") -> Any:
    """The object stored in ``source`` (a mapping is returned as it is)."""
    if isinstance(source, Mapping):
        return source
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        detail = str(err)
        match = re.search(r"Unsupported global: [^\n]*", detail)
        reason = match.group(0) if match else (detail.splitlines() or ["unpickling refused"])[0]
        raise CheckpointFormatError(
            f"cannot load checkpoint {describe(source)} safely: it pickles Python objects, not just tensors, so "
            f"torch.load(weights_only=True) refuses it ({reason}). vmbench never retries with weights_only=False "
            "because unpickling can run arbitrary code; if you trust the file, load it yourself "
            "(torch.load(path, weights_only=False)) and pass the resulting dict instead of the path."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # truncated or not a torch file
        raise CheckpointFormatError(f"cannot read checkpoint {describe(source)}: {err}") from err
