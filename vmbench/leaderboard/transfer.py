"""Transfer tables: final runs scored on a dataset they were not trained on (U-Bench's zero-shot axis).

A run scored on another dataset (a search space's ``transfer:`` key, or ``vmbench evaluate
--dataset OTHER``) carries ``eval_<target>-<split>_*`` metrics, its per-case table under
``eval/<target>-<split>/`` and the tag :func:`vmbench.tracking.transfer_tag` = ``true``. Each such
evaluation becomes a table of its own per trained dataset and protocol, made like the test-split
table (statistics over seeds, paired tests against the reference and of the twins, Holm within
the table), with the trained models' own test DSC beside it; its rows carry ``scored_on`` (the
target) and ``scored_split``. In-domain rows have ``scored_on`` empty.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from vmbench import tracking
from vmbench.leaderboard.columns import PRIMARY
from vmbench.leaderboard.store import MlflowPerCaseLoader
from vmbench.protocols import metric_column

TRANSFER_COLUMNS = ("scored_on", "scored_split", "own_dsc_pct_mean")


def transfer_evaluations(runs: pd.DataFrame) -> list[str]:
    """The evaluation names (``<target>-<split>``) some run is tagged as a transfer evaluation of."""
    prefix = f"tags.{tracking.TAG_TRANSFER_PREFIX}"
    return sorted(c[len(prefix):] for c in runs.columns
                  if c.startswith(prefix) and runs[c].astype("string").eq("true").any())


def tagged_runs(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """The runs whose transfer evaluation ``name`` succeeded (tag ``true``), with ``runs``' attrs."""
    tagged = runs[runs[f"tags.{tracking.transfer_tag(name)}"].astype("string").eq("true").fillna(False)]
    tagged.attrs.update(runs.attrs)
    return tagged


def target_and_split(name: str) -> tuple[str, str]:
    """``isic2017-test`` -> (isic2017, test): split names hold no '-', dataset names may."""
    target, _, split = name.rpartition("-")
    return (target, split) if target else (name, "")


def transfer_loader(per_case_loader, name: str, runs: pd.DataFrame) -> Callable | None | bool:
    """The per-case loader of evaluation ``name``'s files (``eval/<name>/per_case.csv``): ``False``
    (no paired tests) stays False; None reads MLflow when ``runs`` knows its store; a loader that
    cannot read another file (a plain callable) gives False: those tables go untested."""
    artifact = f"eval/{name}/per_case.csv"
    if per_case_loader is False:
        return False
    if per_case_loader is None:
        uri = runs.attrs.get("tracking_uri")
        uris = dict(zip(runs["run_id"], runs["artifact_uri"])) if {"run_id", "artifact_uri"} <= set(runs.columns) else {}
        return MlflowPerCaseLoader(uri, artifact=artifact, artifact_uris=uris) if uri else None
    other = getattr(per_case_loader, "for_artifact", None)
    return other(artifact) if other is not None else False


def own_dsc(rows: pd.DataFrame, own: pd.DataFrame) -> pd.Series:
    """Each transfer row's models' mean DSC on their own dataset's test split (the in-domain row)."""
    column = f"{metric_column(PRIMARY)}_mean"
    if column not in own.columns or own.empty:
        return pd.Series(float("nan"), index=rows.index)
    lookup = own.set_index(["dataset", "protocol", "model"])[column]
    keys = list(zip(rows["dataset"], rows["protocol"], rows["model"]))
    return pd.Series([lookup.get(k, float("nan")) for k in keys], index=rows.index, dtype="float64")
