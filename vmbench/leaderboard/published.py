"""The registry's published rows (``ModelInfo.published``) for the datasets that were measured.

Published values are shown as published (already in display units: percent, HD95 in voxels),
marked with their source, and never averaged with runs.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import pandas as pd

from vmbench.errors import UnknownNameError
from vmbench.leaderboard.columns import PUBLISHED
from vmbench.protocols import RUN_PROTOCOLS, metric_column

log = logging.getLogger(__name__)

# Keys of PublishedResult.metrics that name a vmbench metric differently.
PUBLISHED_ALIASES = {
    "dice_per_image": "per_image_dice",
    "iou_per_image": "per_image_iou",
    "acc_per_image": "per_image_acc",
}


def published_rows(
    evaluations: Mapping[str, str],
    keys: Sequence[str],
    models: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per published result of ``models`` (default: all registered) on the measured datasets.

    ``evaluations``: dataset -> evaluation kind of the measured datasets. Only metric columns
    among ``keys`` are kept. ``protocols`` (the ``--protocol`` filter): published rows of a
    protocol vmbench does not run (e.g. TransFuse's P2) are kept only when it is listed.
    """
    frame = pd.DataFrame(_rows(set(evaluations), models))
    if frame.empty:
        return frame
    if protocols:
        # A protocol filter asks for those tables only; the runs' own protocols stay as references.
        frame = frame[frame["protocol"].isin([*RUN_PROTOCOLS, *protocols])]
    frame = frame.assign(evaluation=frame["dataset"].map(evaluations))
    # Keep only metric columns the leaderboard knows (others would be silently unlabeled).
    known = {f"{metric_column(k)}_mean" for k in keys}
    extra = [c for c in frame.columns if c.endswith("_mean") and c not in known]
    if extra:
        log.debug("published metrics not shown: %s", extra)
        frame = frame.drop(columns=extra)
    return frame


def _rows(datasets: set[str], models: Sequence[str] | None) -> list[dict[str, Any]]:
    import vmbench

    rows = []
    for name in models or vmbench.list_models():
        try:
            info = vmbench.model_info(name)
        except UnknownNameError:  # a --model filter naming a model not installed here: no published rows
            continue
        for result in info.published:
            if result.dataset not in datasets:
                continue
            row: dict[str, Any] = {
                "dataset": result.dataset,
                "protocol": result.protocol,
                "model": name,
                "kind": PUBLISHED,
                "source": result.source,
            }
            for key, value in result.metrics.items():
                row[f"{metric_column(PUBLISHED_ALIASES.get(key, key))}_mean"] = float(value)
            rows.append(row)
    return rows
