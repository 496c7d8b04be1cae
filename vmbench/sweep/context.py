"""What the driver hands to every trial and final run, and what a study returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbench.search_space import SpaceParam


@dataclass
class SweepContext:
    """Everything a trial or final run needs, passed to workers (picklable, small)."""

    sweep: str
    study: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    base: dict[str, Any]
    space: list[SpaceParam]
    metric: str
    mode: str
    max_epochs: int
    cpu: float
    gpu: float
    runs_dir: str
    space_hash: str
    env: dict[str, str] = field(default_factory=dict)
    folds: int | None = None  # protocol cv: the number of folds
    cv_search: str | None = None  # protocol cv: "one-fold" (trials train fold 0) or "mean" (every fold)
    objectives: tuple[str, ...] = ()  # a multi-objective search's metrics (metric is the first)
    folds_in_turn: bool = False  # budget.scheduler wilcoxon: a trial trains its folds one after another
    # The search space's transfer targets other than the study's dataset ({name, root, options}),
    # which every final run is also scored on.
    transfer: tuple[dict[str, Any], ...] = ()


@dataclass
class StudyOutcome:
    """One study's result: the best sampled values, their score, trial counts, the final runs."""

    study: str
    best: dict[str, Any]
    best_value: float
    trials: dict[str, int]
    final: list[dict[str, Any]]


@dataclass
class SweepResult:
    """What ``run_sweep`` did and where: its MLflow parent run, its folder, every study's outcome."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    sweep_dir: Path
    studies: list[StudyOutcome]
    reference: str | None = None  # the paired tests' reference model (the space's `reference`)
