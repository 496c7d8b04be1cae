"""The run folder: the one place that knows where a training's files live.

::

    ROOT/
      checkpoints/last.pt    every epoch, with optimiser state (what --resume continues from)
      checkpoints/best.pt    the selected epoch's weights
      eval/<name>/           per_case.csv and summary.json of an evaluation (test, val, DATASET-SPLIT)
      mlflow_run.json        the MLflow run this folder's training belongs to

A :class:`RunDir` is handed to the engine beside the configuration, never written into it: where a
run is written is not part of the experiment, so moving a folder changes no checkpoint's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
