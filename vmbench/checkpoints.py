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
from pathlib import Path
from typing import Any

import torch

from vmbench.errors import CheckpointError, VmbenchError

__all__ = ["CheckpointFormatError", "CheckpointNotFoundError", "describe", "is_state_dict", "read_checkpoint"]


class CheckpointNotFoundError(VmbenchError, FileNotFoundError):
    """The checkpoint file does not exist (a FileNotFoundError for callers that catch that)."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint cannot be read safely or does not hold what was expected."""


def describe(source: Any) -> str:
    """How messages name a checkpoint: its path, or the type of an in-memory dict."""
    return f"'{source}'" if isinstance(source, (str, PathLike)) else f"<in-memory {type(source).__name__}>"


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


# How a file that torch.save wrote starts: a zip archive (the default since PyTorch 1.6) or, in the
# legacy format, a pickle (protocol 2+ opens with 0x80) holding torch's magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def _check_torch_file(path: Path) -> None:
    """A one-line CheckpointError for what is not a file torch.save wrote (text, images, archives...)."""
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {describe(path)} does not exist")
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint {describe(path)} is a folder, not a file")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
        return
    if not head:
        raise CheckpointFormatError(f"checkpoint {describe(path)} is empty")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (text.isprintable() or text.strip().isprintable() or "\n" in text):
        preview = " ".join(text.split())[:40]
        raise CheckpointFormatError(
            f"checkpoint {describe(path)} is a text file (it starts with {preview!r}), not a file written by torch.save"
        )
    raise CheckpointFormatError(f"checkpoint {describe(path)} is not a file written by torch.save (unknown binary format)")


def read_checkpoint(source: str | PathLike[str] | Mapping[str, Any], map_location: Any = "cpu") -> Any:
    """The object stored in ``source`` (a mapping is returned as it is).

    Files that hold more than tensors, numbers, strings and containers (pickled Python classes) are
    refused, never unpickled: unpickling can run arbitrary code.
    """
    if isinstance(source, Mapping):
        return source
    _check_torch_file(Path(source))
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err)
        match = re.search(r"Unsupported global: [^\n]*", detail)
        reason = match.group(0) if match else (detail.splitlines() or ["unpickling refused"])[0]
        raise CheckpointFormatError(
            f"cannot load checkpoint {describe(source)} safely: it pickles Python objects, not just tensors, so "
            f"torch.load(weights_only=True) refuses it ({reason}); vmbench never unpickles such files (that can run "
            "arbitrary code): save the weights as a plain state dict of tensors where the file was made "
            "(torch.save(model.state_dict(), path))"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as err:  # truncated or corrupt
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointFormatError(f"cannot read checkpoint {describe(source)}: truncated or corrupt ({first})") from err
