"""Writing without destroying, reading without surprises: the one place for vmbench's file rules.

* Atomic writes: a reader sees the old file or the complete new one, never a partial file; a
  target that exists and is not a regular file (a device such as ``/dev/full``, a FIFO, a folder)
  is refused, since a rename would replace the device or pipe by a plain file.
* Output folders: an output may not equal, contain or lie inside an input (symlinks resolved);
  vmbench leaves :data:`OUTPUT_MARKER` in each folder it creates, and ``--overwrite`` replaces
  only a folder that carries it, never one vmbench did not make.
* YAML input: size-limited, alias-limited (an alias bomb expands to gigabytes from a few lines)
  and duplicate keys refused (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = [
    "MAX_YAML_ALIASES",
    "MAX_YAML_BYTES",
    "OUTPUT_MARKER",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write",
    "check_output_apart",
    "check_replaceable",
    "is_vmbench_output",
    "mark_output",
    "read_yaml",
]

# Left in every folder vmbench creates as a whole (generated or prepared data sets): what
# --overwrite may replace. A folder without it was not made by vmbench and is never removed.
OUTPUT_MARKER = ".vmbench-output"

MAX_YAML_BYTES = 1 << 20  # a search space or config is a few kB; 1 MiB is far beyond any real one
MAX_YAML_ALIASES = 100  # real files use a handful of anchors; a billion-laughs file uses thousands


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse a write target that exists and is not a regular file (device, FIFO, socket, folder).

    A symlink is judged by what it points to; a dangling one is allowed (the rename replaces it).
    """
    from vmbench.errors import DataError

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise DataError(f"{path}: a parent of it is a file, not a folder") from None
    if stat.S_ISREG(mode):
        return
    kind = ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    raise DataError(f"{path}: exists and is {kind}, not a regular file; vmbench writes only new or regular files")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds.

    ``mode`` (e.g. ``0o644``) is applied before the rename; by default the file gets what a plain
    ``open()`` would give it (0666 less the umask), not mkstemp's private 0600. A ``path`` that
    exists and is not a regular file is refused before anything is written.
    """
    path = Path(path)
    check_replaceable(path)
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
        check_replaceable(path)  # made a device or folder meanwhile: still refused
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename in (str(tmp), tmp):  # name the file the user asked for, not our temporary one
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
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
    """``torch.save(obj, path)`` through a temporary file and a rename.

    torch's own file writer reports a full disk as a RuntimeError without errno or file; so the
    checkpoint is serialised in memory and written by Python, whose OSError says which and why.
    """
    if save is None:
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return atomic_write(path, buffer.getbuffer().tobytes(), mode)
    with atomic_path(path, mode) as tmp:
        save(obj, tmp)
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Output folders


def check_output_apart(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], option: str = "--out",
                       what: str = "input") -> Path:
    """Refuse an output folder that equals, contains or lies inside one of ``inputs`` (symlinks resolved).

    Writing into an input would overwrite or re-read it; an input inside the output would be
    replaced with it. Returns ``out`` unchanged.
    """
    from vmbench.errors import ConfigError

    target = Path(out).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if target == source:
            raise ConfigError(f"{option} {out}: is the {what} {item} itself; write to another folder")
        if source in target.parents:
            raise ConfigError(f"{option} {out}: lies inside the {what} {item}; write outside it")
        if target in source.parents:
            raise ConfigError(f"{option} {out}: contains the {what} {item}; write to a folder apart from it")
    return Path(out)


def is_vmbench_output(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / OUTPUT_MARKER).is_file()


def mark_output(folder: str | os.PathLike[str]) -> None:
    """Leave the marker that lets a later ``--overwrite`` replace ``folder`` (and nothing else). Its
    text is the same in every folder, so that outputs of the same inputs stay byte-identical."""
    (Path(folder) / OUTPUT_MARKER).write_text("written by vmbench; vmbench --overwrite may replace this folder\n")


# ------------------------------------------------------------------------------------------------
# YAML input


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """``yaml.safe_load`` of a file, bounded: at most :data:`MAX_YAML_BYTES` bytes and
    :data:`MAX_YAML_ALIASES` aliases, no key twice in one mapping. Every refusal is one
    ConfigError naming the file (and the line and key where there is one)."""
    import yaml

    from vmbench.errors import ConfigError

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {size} bytes, over the {MAX_YAML_BYTES} bytes a YAML input may have")
    try:
        with open(path, "rb") as fh:  # read at most the bound, even from a file that grows or a FIFO
            raw = fh.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: over the {MAX_YAML_BYTES} bytes a YAML input may have")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (YAML) file") from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _YamlRefusal as refusal:
        raise ConfigError(f"{path}: {refusal}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    finally:
        loader.dispose()


class _YamlRefusal(Exception):
    """A YAML file vmbench will not take (too many aliases, a duplicate key); message without the file."""


def _bounded_loader():
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    line = self.peek_event().start_mark.line + 1
                    raise _YamlRefusal(f"line {line}: more than {MAX_YAML_ALIASES} aliases (*name); "
                                       "write the values out instead of repeating anchors")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                        key = self.construct_object(key_node, deep=True)
                        line = key_node.start_mark.line + 1
                        if key in seen:
                            raise _YamlRefusal(f"line {line}: duplicate key {key!r} (first on line {seen[key]}); "
                                               "YAML keeps only one of them, so give each key once")
                        seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return BoundedLoader


def _BoundedLoader(text: str):  # noqa: N802  (a loader class built on first use: yaml is imported lazily)
    global _LOADER
    if _LOADER is None:
        _LOADER = _bounded_loader()
    return _LOADER(text)


_LOADER = None
