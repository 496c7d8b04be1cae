"""Where a sweep's Optuna studies live: SQLite on a local disk, a journal file on a network file system.

Only the sweep driver writes the study: ``OptunaSearch`` is Tune's search algorithm, which runs in
the driver process; trials (:mod:`vmbench.sweep.trainable`) never import Optuna. One writer is what
SQLite suits (Optuna's FAQ advises against SQLite for many processes optimising one study).
What SQLite does not suit is a network file system, whose locking it cannot rely on (sqlite.org,
"How To Corrupt An SQLite Database File", 2.1): when the sweep folder is on NFS, SMB, Lustre and
the like, the study goes to ``JournalStorage(JournalFileBackend(path))``, which Optuna provides for
such file systems (its lock is a symlink, atomic on NFS). ``VMBENCH_OPTUNA_STORAGE`` chooses
explicitly: ``sqlite``, ``journal``, or a database URL (``postgresql://...``, ``mysql://...``) for a
server storage.

A sweep resumes with the storage it started with: an existing ``optuna.journal`` or ``optuna.db``
in the sweep folder wins over the file-system rule.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vmbench.errors import ConfigError

log = logging.getLogger("vmbench.sweep")

__all__ = ["NETWORK_FILESYSTEMS", "STORAGE_ENV", "filesystem_type", "optuna_storage"]

STORAGE_ENV = "VMBENCH_OPTUNA_STORAGE"
SQLITE_FILE, JOURNAL_FILE = "optuna.db", "optuna.journal"
# File-system types (as /proc/mounts names them) whose locks SQLite cannot trust.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "lustre", "gpfs", "ceph", "beegfs", "glusterfs",
    "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.cephfs", "fuse.lustre",
})


def _unescape(field: str) -> str:
    # /proc/mounts writes spaces, tabs, newlines and backslashes in paths as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str | Path, mounts: str | None = None) -> str:
    """The type of the file system holding ``path`` (its longest mount point in ``/proc/mounts``,
    or in ``mounts`` when given); "" when unknown (no /proc)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    target = Path(path).resolve()
    best, kind = None, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape(fields[1]))
        if (target == point or point in target.parents) and (best is None or len(point.parts) > len(best.parts)):
            best, kind = point, fields[2]
    return kind


def _choice(folder: Path) -> str:
    chosen = os.environ.get(STORAGE_ENV, "").strip()
    if chosen:
        if chosen not in ("sqlite", "journal") and "://" not in chosen:
            raise ConfigError(f"{STORAGE_ENV}={chosen!r}: expected sqlite, journal or a database URL "
                              "(postgresql://..., mysql://...)")
        return chosen
    if (folder / JOURNAL_FILE).exists():
        return "journal"
    if (folder / SQLITE_FILE).exists():
        return "sqlite"
    kind = filesystem_type(folder)
    if kind in NETWORK_FILESYSTEMS:
        log.info("the sweep folder %s is on a %s file system: the Optuna study goes to a journal file there, "
                 "not SQLite", folder, kind)
        return "journal"
    return "sqlite"


def optuna_storage(folder: str | Path):
    """The storage of the sweep's Optuna studies in ``folder`` (see the module docstring)."""
    import optuna

    folder = Path(folder).resolve()
    chosen = _choice(folder)
    if chosen == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
    # An RDBStorage instance: OptunaSearch takes no URL string.
    url = f"sqlite:///{folder / SQLITE_FILE}" if chosen == "sqlite" else chosen
    return optuna.storages.RDBStorage(url)
