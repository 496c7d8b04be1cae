"""Small helpers shared by the data modules: cache folder, atomic folders, seeded splits."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from vmbench.errors import DataError
from vmbench.io import OUTPUT_MARKER, is_vmbench_output, mark_output
from vmbench.protocols import RUN_PROTOCOLS

__all__ = [
    "SPLITS",
    "PROTOCOLS",
    "cache_dir",
    "atomic_dir",
    "check_split_protocol",
    "check_empty_output",
    "progress_bar",
    "split_by_hash",
]

SPLITS = ("train", "val", "test")
PROTOCOLS = RUN_PROTOCOLS


def cache_dir() -> Path:
    """``$VMBENCH_CACHE`` if set, else ``~/.cache/vmbench``."""
    env = os.environ.get("VMBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vmbench"


def check_split_protocol(split: str, protocol: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if protocol not in PROTOCOLS:
        raise DataError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final``; rename it to ``final`` on success.

    On an exception the temporary folder is removed, so ``final`` is either complete or absent.
    The folder gets vmbench's output marker (:data:`vmbench.io.OUTPUT_MARKER`): ``overwrite``
    replaces an existing ``final`` only if it carries one (or is empty), never a folder vmbench did
    not make. If another process created ``final`` meanwhile (and ``overwrite`` is False), its copy
    is kept and ours is discarded: both were built from the same inputs.
    """
    final = Path(final)
    if overwrite:
        check_empty_output(final, overwrite)  # the marker rule, before any work
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        mark_output(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists() and overwrite:
        check_empty_output(final, overwrite)  # replaced meanwhile by a folder vmbench did not make: kept
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _hash_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()


def split_by_hash(ids: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Split ``ids`` into parts of the given fractions, deterministically by id and seed.

    Ids are ranked by ``sha256(f"{seed}|{id}")``, so the result depends only on the set of ids
    and the seed (never on file-system order); part sizes are cumulative roundings of
    ``fractions * len(ids)``. Each part is returned sorted.
    """
    ranked = sorted(ids, key=lambda i: (_hash_key(seed, i), i))
    total = float(sum(fractions))
    parts, start, acc = [], 0, 0.0
    for f in fractions:
        acc += f
        stop = int(round(len(ranked) * acc / total))
        parts.append(sorted(ranked[start:stop]))
        start = stop
    return parts


def check_empty_output(out_dir: Path, overwrite: bool) -> None:
    """A folder that generated or prepared data may be written to: new, empty, or (with
    ``overwrite``) one vmbench wrote before, as its output marker shows. A folder vmbench did not
    make is never replaced, whatever ``overwrite`` says."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() and overwrite:
        raise DataError(f"output folder {out_dir} is a symbolic link: vmbench replaces only folders it made; "
                        "give the folder it points to, or a new one")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output folder {out_dir} is a file")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise DataError(f"output folder {out_dir} already exists and is not empty: choose an empty folder, or replace "
                        "it (--overwrite on the command line, overwrite=True in Python)")
    if not is_vmbench_output(out_dir):
        raise DataError(f"output folder {out_dir} was not written by vmbench (no {OUTPUT_MARKER} in it), so "
                        "--overwrite will not delete it: remove it yourself, or choose a new folder")


def progress_bar(items, total: int | None, desc: str, enabled: bool, unit: str = "it"):
    """A progress bar on a terminal (tqdm hides itself elsewhere); the plain iterable when disabled."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit, leave=False, disable=None, dynamic_ncols=True)
