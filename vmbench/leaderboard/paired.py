"""The paired tests of each model against a reference model, Holm-corrected per table.

Per (dataset, protocol), each model's per-case DSC on the test split (averaged over its seeds,
and over its folds under protocol cv; :mod:`vmbench.leaderboard.cases`) is paired by case id with
the reference model's, and :func:`vmbench.statistics.wilcoxon_signed_rank` tests the differences
(two-sided). The p-values of the m comparisons of one table are then adjusted with Holm's
step-down method (:func:`vmbench.statistics.holm`), which controls the family-wise error rate
over those m comparisons: a model counts as different from the reference only if its adjusted p
is below the level. ISIC cases are images (per-image Dice), Synapse cases are volumes (mean over
organs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vmbench.leaderboard.cases import CaseTables
from vmbench.statistics import holm, wilcoxon_signed_rank

__all__ = ["paired_tests"]


def paired_tests(out: pd.DataFrame, reference: str, cases: CaseTables | None) -> None:
    """Fill ``wilcoxon_p``, ``wilcoxon_p_holm``, ``wilcoxon_pairs``, ``dsc_diff_pp`` and ``note`` in place.

    ``out``: the measured rows; ``cases``: the per-case tables of their finished runs (None: no
    per-case loader, every test skipped with a note).
    """
    if cases is None:
        out.loc[out["model"] != reference, "note"] = "paired test skipped: no per-case loader (no tracking URI)"
        return
    for i, row in out.iterrows():
        key = (row["dataset"], row["protocol"], row["model"])
        ref_key = (row["dataset"], row["protocol"], reference)
        if row["model"] == reference:
            out.at[i, "note"] = "reference"
        elif ref_key not in cases.groups:
            out.at[i, "note"] = f"paired test skipped: reference {reference!r} has no finished runs here"
        elif key not in cases.groups:
            out.at[i, "note"] = "paired test skipped: no finished runs"
        else:
            result = _compare(cases.model_scores(key), cases.model_scores(ref_key), reference)
            for column, value in result.items():
                out.at[i, column] = value
    for _, group in out.groupby(["dataset", "protocol"], sort=False):
        out.loc[group.index, "wilcoxon_p_holm"] = holm(group["wilcoxon_p"].to_numpy(dtype="float64"))


def _compare(mine: tuple[pd.Series | None, str], ref: tuple[pd.Series | None, str], reference: str) -> dict:
    """The row's test result (or why it was skipped) from the two groups' per-case means."""
    (scores, note_m), (ref_scores, note_r) = mine, ref
    notes = [n for n in (note_m, f"reference {reference}: {note_r}" if note_r else "") if n]
    if scores is None or ref_scores is None:
        return {"note": "paired test skipped: " + "; ".join(notes)}
    joined = pd.concat([scores.rename("m"), ref_scores.rename("r")], axis=1, join="inner").dropna()
    if joined.empty:
        return {"note": "paired test skipped: no case ids shared with the reference"}
    diff = (joined["m"] - joined["r"]).to_numpy(dtype="float64")
    p, method = wilcoxon_signed_rank(diff)
    unpaired = len(scores) + len(ref_scores) - 2 * len(joined)
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
