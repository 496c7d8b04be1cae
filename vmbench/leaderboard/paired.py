"""The paired test of each model against a reference model, from the runs' per-case tables.

Per (dataset, protocol), each model's per-case DSC (averaged over its seeds) is paired by case id
with the reference model's, and :func:`vmbench.leaderboard.stats.wilcoxon_signed_rank` tests the
differences. ISIC cases are images (per-image Dice), Synapse cases are volumes (mean over organs).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from vmbench.errors import DataError
from vmbench.leaderboard.columns import KEYS
from vmbench.leaderboard.stats import wilcoxon_signed_rank

PerCaseLoader = Callable[[str], "pd.DataFrame | None"]


def per_case_dsc(frame: pd.DataFrame) -> pd.Series:
    """Per-case DSC indexed by case id: ISIC per-image dice; Synapse mean over organs of ``dice``."""
    if "id" not in frame.columns or "dice" not in frame.columns:
        raise DataError(f"per-case table has no id/dice columns (columns: {list(frame.columns)})")
    ids = frame["id"].astype(str)
    return pd.to_numeric(frame["dice"], errors="coerce").groupby(ids).mean()


class _CaseMeans:
    """Seed-averaged per-case DSC of each group, each run's table loaded once."""

    def __init__(self, run_ids: pd.Series, loader: PerCaseLoader):
        self.run_ids = run_ids
        self.loader = loader
        self._cache: dict[tuple, tuple[pd.Series | None, str]] = {}

    def __call__(self, key: tuple) -> tuple[pd.Series | None, str]:
        """Per-case DSC (fraction) averaged over the seeds of one group, and a note."""
        if key not in self._cache:
            ids = self.run_ids.get(key, [])
            frames = [self.loader(run_id) for run_id in ids]
            series = [per_case_dsc(f) for f in frames if f is not None and not f.empty]
            missing = len(ids) - len(series)
            note = f"per-case CSV missing for {missing} of {len(ids)} runs" if missing else ""
            if not series:
                self._cache[key] = (None, note or "no per-case CSV")
            else:
                self._cache[key] = (pd.concat(series, axis=1).mean(axis=1, skipna=True), note)
        return self._cache[key]


def paired_tests(out: pd.DataFrame, finished: pd.DataFrame, reference: str, loader: PerCaseLoader | None) -> None:
    """Fill ``wilcoxon_p``, ``wilcoxon_pairs``, ``dsc_diff_pp`` and ``note`` of the measured rows in place.

    ``finished``: the finished runs (``run_id`` and the key columns) whose metrics the rows show.
    """
    if loader is None:
        out.loc[out["model"] != reference, "note"] = "paired test skipped: no per-case loader (no tracking URI)"
        return
    run_ids = finished.groupby(KEYS, sort=False)["run_id"].agg(list)
    case_means = _CaseMeans(run_ids, loader)
    for i, row in out.iterrows():
        key = (row["dataset"], row["protocol"], row["model"])
        ref_key = (row["dataset"], row["protocol"], reference)
        if row["model"] == reference:
            out.at[i, "note"] = "reference"
        elif ref_key not in run_ids.index:
            out.at[i, "note"] = f"paired test skipped: reference {reference!r} has no finished runs here"
        elif key not in run_ids.index:
            out.at[i, "note"] = "paired test skipped: no finished runs"
        else:
            result = _compare(case_means(key), case_means(ref_key), reference)
            for column, value in result.items():
                out.at[i, column] = value


def _compare(mine: tuple[pd.Series | None, str], ref: tuple[pd.Series | None, str], reference: str) -> dict:
    """The row's test result (or why it was skipped) from the two groups' per-case means."""
    (cases, note_m), (ref_cases, note_r) = mine, ref
    notes = [n for n in (note_m, f"reference {reference}: {note_r}" if note_r else "") if n]
    if cases is None or ref_cases is None:
        return {"note": "paired test skipped: " + "; ".join(notes)}
    joined = pd.concat([cases.rename("m"), ref_cases.rename("r")], axis=1, join="inner").dropna()
    if joined.empty:
        return {"note": "paired test skipped: no case ids shared with the reference"}
    diff = (joined["m"] - joined["r"]).to_numpy(dtype="float64")
    p, method = wilcoxon_signed_rank(diff)
    unpaired = len(cases) + len(ref_cases) - 2 * len(joined)
    if unpaired:
        notes.append(f"{unpaired} unpaired cases left out")
    if method not in ("exact", "asymptotic"):
        notes.append(method)
    elif method == "asymptotic":
        notes.append("normal approximation")
    return {
        "wilcoxon_p": p,
        "wilcoxon_pairs": len(joined),
        "dsc_diff_pp": float(np.mean(diff) * 100.0),
        "note": "; ".join(notes),
    }
