"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_path", "atomic_write", "atomic_torch_save", "read_yaml"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds.

    ``mode`` (e.g. ``0o644``) is applied before the rename; by default the file gets what a plain
    ``open()`` would give it (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None) -> Path:
    """Write text (UTF-8, newlines as given) or bytes to ``path`` atomically."""
    with atomic_path(path, mode) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(data)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str], mode: int | None = None,
                      save: Callable[[Any, Any], None] | None = None) -> Path:
    """``torch.save(obj, path)`` through a temporary file and a rename."""
    if save is None:
        import torch

        save = torch.save
    with atomic_path(path, mode) as tmp:
        save(obj, tmp)
    return Path(path)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """``yaml.safe_load`` of a file; a file that is not YAML text is one ConfigError naming it."""
    import yaml

    from vmbench.errors import ConfigError

    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (YAML) file") from None
