"""The run folder: the one place that knows where a training's files live.

::

    ROOT/
      checkpoints/last.pt    every epoch, with optimiser state (what --resume continues from)
      checkpoints/best.pt    the selected epoch's weights
      eval/<name>/           per_case.csv and summary.json of an evaluation (test, val, DATASET-SPLIT)
      mlflow_run.json        the MLflow run this folder's training belongs to
      .vmbench.lock          held (flock) by the one command writing the folder: pid, host, command, since

A :class:`RunDir` is handed to the engine beside the configuration, never written into it: where a
run is written is not part of the experiment, so moving a folder changes no checkpoint's config.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: "str | Path | RunDir"):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunDir":
        """The run folder a checkpoint was written in (``ROOT/checkpoints/NAME.pt``)."""
        return cls(Path(checkpoint).parent.parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def pointer(self) -> Path:
        return self.root / "mlflow_run.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".vmbench.lock"

    @contextlib.contextmanager
    def lock(self, option: str = "--out") -> Iterator["RunDir"]:
        """Hold the folder for this process: one writer at a time (train, resume, evaluate).

        An exclusive ``flock`` on :attr:`lock_file`, not waited for: a second command refuses at
        once, in one line naming who holds it (pid, host, command, since when). The kernel drops
        the lock when the holder dies, so a killed run never leaves the folder locked. A folder
        this call created is removed again when the block fails and left nothing but the lock.
        """
        import fcntl

        from vmbench.errors import ConfigError

        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{option} {self.root}: is a file, not a folder")
        made = [p for p in (self.root, *self.root.parents) if not p.exists()]
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{option} {self.root}: in use by {_holder(fd)}; wait for it to end, "
                                  f"or choose another {option}") from None
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[1:]) or sys.argv[0],
                      "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            try:
                yield self
            except BaseException:
                os.ftruncate(fd, 0)
                if made and not any(p.name != self.lock_file.name for p in self.root.iterdir()):
                    self.lock_file.unlink(missing_ok=True)  # refused before writing: leave no folder behind
                    for folder in made:  # the deepest first
                        with contextlib.suppress(OSError):  # a folder something else wrote into stays
                            folder.rmdir()
                raise
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def eval_dir(self, name: str) -> Path:
        """Where the evaluation ``name`` (a split, or ``DATASET-SPLIT`` for another dataset) is written."""
        return self.root / "eval" / name

    def child(self, name: str) -> "RunDir":
        """A run folder inside this one (a fold of a cross-validated search trial); "" is this one."""
        return RunDir(self.root / name) if name else self

    def make(self) -> "RunDir":
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    def __str__(self) -> str:
        return str(self.root)

    def __fspath__(self) -> str:
        return str(self.root)


def _holder(fd: int) -> str:
    """Who holds a run-folder lock, as its lock file says (written right after taking it)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        info = {}
    if not info:
        return "another vmbench process"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} (vmbench {info.get('command', '?')}) "
            f"since {info.get('since', '?')}")
