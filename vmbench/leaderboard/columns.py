"""The leaderboard frame's vocabulary: its key and count columns, and which metrics a dataset shows.

A dataset's metric set comes from its registry entry (:meth:`vmbench.registry.DatasetInfo.table_metrics`).
Runs of a dataset that is not registered here (logged with a plug-in that is no longer installed)
get the metric set of the evaluation kind their metrics point to, and their tables say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

from vmbench.errors import UnknownNameError
from vmbench.protocols import EVALUATIONS, POOLED_2D, VOLUME, evaluation_kind
from vmbench.registry import DatasetInfo

KEYS = ["dataset", "protocol", "model"]
MEASURED, PUBLISHED = "measured", "published"
COUNTS = ("n", "failed", "running", "pruned")
COST_METRICS = ("n_params", "gmacs", "train_time_s", "device_hours", "latency_ms", "peak_mem_mb", "epochs")
PRIMARY = "dsc"

# Shown beside a kind's table metrics when the runs log them (older runs did not).
OPTIONAL_SHOWN = {POOLED_2D: ("per_image_iou",)}


def _metrics_of(kind: str) -> set[str]:
    return set(EVALUATIONS[kind].val_metrics) | set(EVALUATIONS[kind].test_metrics)


# Keys only volume evaluations report: runs that log one of them were evaluated per volume.
_VOLUME_ONLY = frozenset(_metrics_of(VOLUME) - _metrics_of(POOLED_2D))


@dataclass(frozen=True)
class DatasetMetrics:
    """The metric keys of one dataset: ``shown`` by default, ``extra`` aggregated for csv/json only."""

    dataset: str
    evaluation: str
    shown: tuple[str, ...]
    extra: tuple[str, ...]


def registered_dataset(name: str) -> DatasetInfo | None:
    """The registry entry of ``name``; None when no installed package registers it.

    Only an unknown name is expected here; a plug-in that fails to import raises, with its name.
    """
    import vmbench

    try:
        return vmbench.dataset_info(name)
    except UnknownNameError:
        return None


def infer_evaluation(present: Collection[str]) -> str:
    """The evaluation kind that the logged metric keys point to (HD95 or strict DSC: volumes)."""
    return VOLUME if any(k in _VOLUME_ONLY or k.startswith("hd95_") for k in present) else POOLED_2D


def dataset_metrics(name: str, present: Collection[str], evaluation: str | None = None) -> DatasetMetrics:
    """The keys shown and aggregated for dataset ``name``, given the metric keys its runs log.

    Registered datasets: their ``table_metrics()`` (per-class DSC of their class names), with
    per-class keys the runs log beyond those added after the registered ones. Unregistered
    datasets: ``evaluation`` if given (the kind recorded in a leaderboard frame), else the kind
    :func:`infer_evaluation` finds, with the per-class keys the runs log.
    """
    info = registered_dataset(name)
    if info is not None:
        kind, base, classes = info.kind, tuple(info.table_metrics()), info.foreground_classes
    else:
        kind = evaluation_kind(evaluation or infer_evaluation(present))
        base, classes = kind.table_metrics, ()
    if kind.per_class:
        extra_dsc = _logged_classes(present, "dsc_", classes)
        shown = _before_strict(base, [f"dsc_{c}" for c in extra_dsc])
        extra = tuple(f"hd95_{c}" for c in (*classes, *_logged_classes(present, "hd95_", classes)))
    else:
        shown, extra = tuple(base), ()
    shown += tuple(k for k in OPTIONAL_SHOWN.get(kind.name, ()) if k in present)
    return DatasetMetrics(name, kind.name, shown, extra)


def _logged_classes(present: Collection[str], prefix: str, known: Sequence[str]) -> list[str]:
    """Class names of per-class keys ``<prefix><class>`` that the runs log beyond ``known``."""
    return sorted(
        k[len(prefix) :] for k in present
        if k.startswith(prefix) and k != f"{prefix}strict" and k[len(prefix) :] not in known
    )


def _before_strict(keys: Sequence[str], insert: Sequence[str]) -> tuple[str, ...]:
    """``keys`` with ``insert`` placed before the strict variants (which close a table's columns)."""
    at = next((i for i, k in enumerate(keys) if k.endswith("_strict")), len(keys))
    return (*keys[:at], *insert, *keys[at:])


def unregistered_note(dataset: str, evaluation: str) -> str:
    return (
        f"Dataset '{dataset}' is not registered in this process (a folder its runs declared, or a plug-in not "
        f"installed here): its columns follow the '{evaluation}' evaluation inferred from the metrics its runs logged."
    )
