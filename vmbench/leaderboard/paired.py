"""The paired tests of each model against a reference model and of each model against its ablation
twins, Holm-corrected together per table.

Per (dataset, protocol), each model's per-case DSC on the test split (averaged over its seeds,
and over its folds under protocol cv; :mod:`vmbench.leaderboard.cases`) is paired by case id with
the reference model's, and :func:`vmbench.statistics.wilcoxon_signed_rank` tests the differences
(two-sided). A model ``M`` whose ablation twin (``M~no-ssm``, ``M~no-mamba``:
:func:`vmbench.ablation.split_model_name`) is in the same table is also tested against that twin
("does the state-space part help?"). The p-values of all comparisons of one table, reference and
twin tests together, are adjusted with Holm's step-down method (:func:`vmbench.statistics.holm`),
which controls the family-wise error rate over them: a difference counts only if its adjusted p
is below the level. A twin comparison that is the reference comparison (the reference is the
model or its twin) is counted once. A twin whose model is in the table is a control, not a
candidate: it is tested against its model only, never against the reference (a test that answers
no question of the sweep and would only widen Holm's family). ISIC cases are images (per-image
Dice), Synapse cases are volumes (mean over organs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vmbench.leaderboard.cases import CaseTables
from vmbench.ablation import split_model_name
from vmbench.errors import UnknownAblationError
from vmbench.statistics import holm, wilcoxon_signed_rank

__all__ = ["ABLATION_COLUMNS", "CONTROL_NOTE", "paired_tests", "twin_of"]

# The note of a twin's row in the reference columns: it is tested against its model, not the reference.
CONTROL_NOTE = "ablation control: tested against its model only (Ablations)"
# The twin's row carries its comparison with its model: Δ = twin − model (negative: removing the part costs).
ABLATION_COLUMNS = ("ablation_of", "ablation", "ablation_p", "ablation_p_holm", "ablation_pairs", "ablation_diff_pp",
                    "ablation_note")


def twin_of(model: str) -> tuple[str, str] | None:
    """``(model, ablation)`` of an ablation twin's name; None for any other name."""
    try:
        base, ablation = split_model_name(model)
    except UnknownAblationError:  # a "~" that names no ablation: a plain model name to the leaderboard
        return None
    return (base, ablation) if ablation is not None else None


def paired_tests(out: pd.DataFrame, reference: str | None, cases: CaseTables | None) -> None:
    """Fill the reference comparison (``wilcoxon_p``, ``wilcoxon_p_holm``, ``wilcoxon_pairs``,
    ``dsc_diff_pp``, ``note``), the twin comparison (:data:`ABLATION_COLUMNS`, on twin rows) and
    ``holm_m`` (the size of the table's family) in place.

    ``out``: the measured rows; ``cases``: the per-case tables of their finished runs (None: no
    per-case loader, every test skipped with a note). ``reference`` None: twin tests only.
    """
    if cases is None:
        skipped = "paired test skipped: no per-case loader (no tracking URI)"
        if reference:
            out.loc[out["model"] != reference, "note"] = skipped
        for i, _, twin in _twins(out):  # the Ablations section still names the pair, and why it has no test
            out.at[i, "ablation_of"], out.at[i, "ablation"] = twin
            out.at[i, "ablation_note"] = skipped
        return
    controls = {i for i, row, twin in _twins(out) if reference not in (twin[0], row["model"])}
    for i, row in out.iterrows():
        if i in controls:
            out.at[i, "note"] = CONTROL_NOTE
        elif reference:
            _reference_test(out, i, row, reference, cases)
    own = _twin_tests(out, reference, cases)
    for _, group in out.groupby(["dataset", "protocol"], sort=False):
        ref_p = group["wilcoxon_p"].to_numpy(dtype="float64")
        twin_p = group["ablation_p"].where(group.index.isin(own)).to_numpy(dtype="float64")
        adjusted = holm(np.concatenate([ref_p, twin_p]))  # one family: reference and twin tests together
        out.loc[group.index, "wilcoxon_p_holm"] = adjusted[: len(group)]
        out.loc[group.index, "ablation_p_holm"] = np.where(group.index.isin(own), adjusted[len(group):], np.nan)
        out.loc[group.index, "holm_m"] = int(np.isfinite(np.concatenate([ref_p, twin_p])).sum())
    _share_reference_tests(out, reference, own)
    _best_tests(out, reference, cases)


def _reference_test(out: pd.DataFrame, i, row: pd.Series, reference: str, cases: CaseTables) -> None:
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


def _twin_tests(out: pd.DataFrame, reference: str | None, cases: CaseTables) -> set:
    """Test each twin against its model in its table; returns the rows whose test is their own (not
    the reference comparison, which :func:`_share_reference_tests` copies after the correction)."""
    own = set()
    for i, row, twin in _twins(out):
        base = twin[0]
        out.at[i, "ablation_of"], out.at[i, "ablation"] = twin
        if reference in (base, row["model"]):
            continue
        key, base_key = ((row["dataset"], row["protocol"], m) for m in (row["model"], base))
        result = _compare(cases.model_scores(key), cases.model_scores(base_key), base)
        out.at[i, "ablation_note"] = result.pop("note")
        for column, value in result.items():
            out.at[i, column.replace("wilcoxon", "ablation").replace("dsc", "ablation")] = value
        own.add(i)
    return own


def _twins(out: pd.DataFrame):
    """(index, row, (model, ablation)) of each twin whose model is in the same table."""
    present = set(zip(out["dataset"], out["protocol"], out["model"]))
    for i, row in out.iterrows():
        twin = twin_of(row["model"])
        if twin is not None and (row["dataset"], row["protocol"], twin[0]) in present:
            yield i, row, twin


def _share_reference_tests(out: pd.DataFrame, reference: str | None, own: set) -> None:
    """A twin of the reference, or the reference as a twin: its twin test is the reference test (same
    pair of models, same p), with Δ turned to twin − model."""
    for i, row in out[out["ablation_of"].notna()].iterrows():
        if i in own:
            continue
        same = (out["dataset"] == row["dataset"]) & (out["protocol"] == row["protocol"])
        if row["ablation_of"] == reference:
            src, sign = row, 1.0
        else:  # the twin is the reference: its model's row holds the test, Δ = model − twin
            src, sign = out[same & (out["model"] == row["ablation_of"])].iloc[0], -1.0
        out.at[i, "ablation_p"], out.at[i, "ablation_p_holm"] = src["wilcoxon_p"], src["wilcoxon_p_holm"]
        out.at[i, "ablation_pairs"] = src["wilcoxon_pairs"]
        out.at[i, "ablation_diff_pp"] = sign * src["dsc_diff_pp"]
        out.at[i, "ablation_note"] = "the reference comparison (counted once in Holm's family)"


def _best_tests(out: pd.DataFrame, reference: str | None, cases: CaseTables) -> None:
    """Per table, each model against the model of highest mean DSC (``best_model``): ``vs_best_p_holm``,
    for the cost verdict (the cheapest model not significantly worse than the best). Twins are controls,
    not candidates. The best being the reference, the reference family's adjusted p is reused, so both
    verdicts read the same test; otherwise these m - 1 tests are their own Holm family."""
    primary = "dsc_pct_mean"
    for _, group in out.groupby(["dataset", "protocol"], sort=False):
        models = group[group["model"].map(twin_of).isna() & group[primary].notna()]
        if models.empty:
            continue
        best = models.loc[models[primary].idxmax(), "model"]
        out.loc[models.index, "best_model"] = best
        others = models[models["model"] != best]
        if best == reference:
            out.loc[others.index, "vs_best_p_holm"] = others["wilcoxon_p_holm"]
            continue
        table = (group["dataset"].iloc[0], group["protocol"].iloc[0])
        best_scores = cases.model_scores((*table, best))
        raw = [_compare(cases.model_scores((*table, m)), best_scores, best).get("wilcoxon_p", np.nan)
               for m in others["model"]]
        out.loc[others.index, "vs_best_p_holm"] = holm(raw)


def _compare(mine: tuple[pd.Series | None, str], ref: tuple[pd.Series | None, str], reference: str) -> dict:
    """The row's test result (or why it was skipped) from the two groups' per-case means."""
    (scores, note_m), (ref_scores, note_r) = mine, ref
    notes = [n for n in (note_m, f"reference {reference}: {note_r}" if note_r else "") if n]
    if scores is None or ref_scores is None:
        return {"note": "paired test skipped: " + "; ".join(notes)}
    joined = pd.concat([scores.rename("m"), ref_scores.rename("r")], axis=1, join="inner").dropna()
    if joined.empty:
        return {"note": f"paired test skipped: no case ids shared with {reference}"}
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
