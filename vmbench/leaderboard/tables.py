"""The leaderboard frame split into tables: one per (dataset, protocol), each with its notes.

Every table names its protocol. Measured rows of one protocol share a table with the dataset's
published rows of the protocols vmbench runs; published rows of any other protocol (TransFuse's
P2) are not comparable with them and get a table of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from vmbench import tracking
from vmbench.leaderboard.columns import MEASURED, PUBLISHED, dataset_metrics, registered_dataset, unregistered_note
from vmbench.protocols import CV, PROTOCOLS, RUN_PROTOCOLS, metric_column, metric_unit


@dataclass
class Table:
    dataset: str
    protocol: str
    title: str
    notes: list[str]
    rows: pd.DataFrame  # numeric rows: measured (this protocol) + published (this dataset)
    metrics: list[str]
    # A transfer table: the models trained on ``dataset`` scored on ``scored_on``'s ``scored_split``.
    scored_on: str = ""
    scored_split: str = ""

    @property
    def is_transfer(self) -> bool:
        return bool(self.scored_on)


def paired_reference(board: pd.DataFrame) -> str | None:
    """The reference model when the paired test ran (p-value columns shown), else None."""
    attrs = board.attrs
    return attrs.get("reference") if attrs.get("paired_test") else None


def split_tables(board: pd.DataFrame) -> list[Table]:
    """One table per (dataset, protocol) of measured rows; the dataset's published rows follow.

    Published rows of a protocol no vmbench run uses (e.g. TransFuse's P2) get a table per
    (dataset, protocol) of their own instead, after the measured ones.
    """
    if board.empty:
        return []
    measured = board[board["kind"] == MEASURED]
    published = board[board["kind"] == PUBLISHED]
    comparable = published["protocol"].isin(RUN_PROTOCOLS)
    published, apart = published[comparable], published[~comparable]
    reference = paired_reference(board)
    tables: list[Table] = []
    scored_on = measured["scored_on"].fillna("") if "scored_on" in measured.columns else pd.Series("", index=measured.index)
    for (dataset, protocol, target), group in measured.groupby(["dataset", "protocol", scored_on], sort=True):
        if target:  # a transfer table: no published rows (they are of the trained dataset's test split)
            tables.append(_transfer_table(dataset, protocol, group.reset_index(drop=True), reference, board.attrs))
            continue
        pub = published[published["dataset"] == dataset]
        rows = pd.concat([group, pub], ignore_index=True)
        keys = _shown_metrics(dataset, rows, board.attrs)
        title = f"{dataset} | protocol: {protocol} ({_describe(protocol)}) | {_what(board.attrs)}"
        notes = _measured_notes(group, pub, keys, protocol, reference, board.attrs)
        tables.append(Table(dataset, protocol, title, notes, rows, keys))
    for (dataset, protocol), pub in apart.groupby(["dataset", "protocol"], sort=True):
        pub = pub.reset_index(drop=True)
        title = f"{dataset} | protocol: {protocol} ({_describe(protocol)}) | published results only"
        notes = [
            f"Rows marked [published] are numbers reported in papers under protocol '{protocol}' (split, "
            "resolution and metric differ): not comparable with the measured tables or with other protocols' "
            "published rows.",
        ]
        tables.append(Table(dataset, protocol, title, notes, pub, _shown_metrics(dataset, pub, board.attrs)))
    # A published-only table next to its dataset's others; transfer tables after the test split's.
    tables.sort(key=lambda t: (t.dataset, t.protocol, t.scored_on))
    return tables


def _transfer_table(dataset: str, protocol: str, group: pd.DataFrame, reference: str | None, attrs) -> Table:
    target, split = group["scored_on"].iloc[0], group["scored_split"].iloc[0]
    keys = _shown_metrics(dataset, group, attrs)
    stage = "single `vmbench train` runs" if attrs.get("stage") == "single" else "final runs"
    title = (f"{dataset} → {target} | protocol: {protocol} | transfer: {stage} trained on {dataset}, "
             f"scored on {target}'s {split} split")
    notes = [
        f"Transfer (U-Bench's zero-shot axis): each model as trained and selected on {dataset}, scored on {target}'s "
        f"{split} split with no retraining or fine-tuning. Own test DSC: the same runs on {dataset}'s test split "
        "(its table above); the difference is what the model loses on data it never saw.",
        *_measured_notes(group, group.iloc[0:0], keys, protocol, reference, attrs),
    ]
    return Table(dataset, protocol, title, notes, group, keys, target, split)


def _describe(protocol: str) -> str:
    return PROTOCOLS[protocol].description if protocol in PROTOCOLS else "unknown protocol"


def _what(attrs) -> str:
    """What the measured rows of a table are: their stage and the metrics shown."""
    stage, prefix = attrs.get("stage", "final"), attrs.get("prefix") or "test_"
    if stage == "final":
        return "final runs, test split"
    if stage == "single":
        return "single `vmbench train` runs (not tuned), test split"
    only = attrs.get("set_aside_stage")
    if only:
        return f"all stages: {only} runs only, metrics '{prefix}*' (inspection, not a leaderboard)"
    return f"{stage or 'all'} runs, metrics '{prefix}*' (inspection, not a leaderboard)"


def _shown_metrics(dataset: str, rows: pd.DataFrame, attrs) -> list[str]:
    """The table's metric columns: the chosen ones (``--metrics``) or the dataset's, where any row has a value."""
    all_keys = attrs.get("metrics") or []
    if attrs.get("explicit_metrics"):
        keys = list(all_keys)
    else:
        evaluation = rows["evaluation"].iloc[0] if "evaluation" in rows.columns else None
        keys = list(dataset_metrics(dataset, all_keys, evaluation).shown)
    return [k for k in keys if f"{metric_column(k)}_mean" in rows.columns and rows[f"{metric_column(k)}_mean"].notna().any()]


def _measured_notes(
    group: pd.DataFrame, pub: pd.DataFrame, keys: Sequence[str], protocol: str, reference: str | None, attrs
) -> list[str]:
    notes = []
    n_test = int(group["val_is_test_runs"].sum())
    if n_test:
        notes.append(
            f"WARNING: {n_test} of {int(group['n'].sum())} runs selected their checkpoint on the test split "
            "(val_is_test=true): these results are optimistic."
        )
    units = sorted({metric_unit(k) for k in keys})
    unit_text = [text for unit, text in (("pct", "DSC and other overlap metrics in %"), ("vox", "HD95 in voxels")) if unit in units]
    notes.append("Units: " + ", ".join(unit_text or ["as logged"]) + ". " + _interval_note(units, protocol))
    notes += _count_notes(group, attrs)
    notes += list((attrs.get("budget_flags") or {}).get((group["dataset"].iloc[0], protocol), []))
    mixed = group["hardware"].dropna()
    if mixed.str.contains(r" \| ", regex=True).any() or mixed.nunique() > 1:
        notes.append("Hardware differs between runs: latency and training time are not comparable across rows.")
    if (group["sweeps"] > 1).any():
        notes.append("Some rows pool final runs from several sweeps (vmbench.sweep).")
    runs_per_seed = group["folds"].clip(lower=1) if "folds" in group.columns else 1
    if ((group["seeds"] > 0) & (group["seeds"] * runs_per_seed < group["n"])).any():
        notes.append("Some rows contain several runs with the same seed; each run counts in n.")
    notes += _comparison_notes(group, pub, keys, protocol, reference)
    dataset = group["dataset"].iloc[0]
    if registered_dataset(dataset) is None:
        notes.append(unregistered_note(dataset, group["evaluation"].iloc[0]))
    return notes


def _interval_note(units: Sequence[str], protocol: str) -> str:
    """How the measured cells and their intervals are computed."""
    scales = [text for unit, text in (("pct", "logit scale for %"), ("vox", "log scale for HD95")) if unit in units]
    bounds = [text for unit, text in (("pct", "inside [0, 100] %"), ("vox", "above 0 voxels")) if unit in units]
    how = (f"t-interval on the {' and '.join(scales)}, mapped back, so it stays {' and '.join(bounds)}"
           if scales else "t-interval")
    if protocol == CV:
        return (
            "Protocol cv: n counts final runs = folds x seeds (columns Folds, seeds), each scored on the untouched "
            "test split; mean ± sample std over those runs. 95% CI over seeds of the fold-averaged score "
            f"({how}; fold models share training data, so folds are not independent samples; '–' with one seed)."
        )
    return f"Measured: mean ± sample std over seeds (n); 95% CI over seeds: {how} ('–' with n=1)."


def _count_notes(group: pd.DataFrame, attrs) -> list[str]:
    """What the counts leave out: failed, unfinished, ASHA-stopped runs, other stages."""
    notes = []
    failed, running, pruned = (int(group[c].sum()) for c in ("failed", "running", "pruned"))
    if failed or running:
        notes.append(f"Excluded: {failed} failed/killed and {running} unfinished runs (column 'failed').")
    if pruned:
        notes.append(
            f"Excluded: {pruned} search trials stopped early (ASHA, or the Wilcoxon pruner after a fold; {tracking.TAG_OUTCOME}={tracking.PRUNED}; "
            "column 'pruned'): their metrics come from fewer epochs. Only trials that ran the full budget are averaged."
        )
    only = attrs.get("set_aside_stage")
    if only:
        key = (group["dataset"].iloc[0], group["protocol"].iloc[0])
        aside = (attrs.get("set_aside") or {}).get(key, 0)
        left_out = f"; {aside} runs of other stages left out (--stage search shows trials' val_* metrics)" if aside else ""
        notes.append(
            f"All stages: only {only} runs log {attrs.get('prefix')}* metrics, so n and the other counts are of "
            f"{only} runs{left_out}."
        )
    return notes


def _comparison_notes(group: pd.DataFrame, pub: pd.DataFrame, keys, protocol: str, reference: str | None) -> list[str]:
    """The paired test, the published rows and the per-class columns of a measured table."""
    notes = []
    if reference:
        if (group["model"] == reference).any():
            family = group["holm_m"].dropna() if "holm_m" in group.columns else pd.Series(dtype="Int64")
            m = int(family.iloc[0]) if len(family) else int(group["wilcoxon_p"].notna().sum())
            twins = " (the ablation twins' tests included)" if "ablation_p" in group.columns and group["ablation_p"].notna().any() else ""
            notes.append(
                "p: two-sided Wilcoxon signed-rank test of per-case DSC (ISIC: per image; Synapse: per case, mean "
                f"over organs) against {reference} (cases paired by id, per-case values averaged over seeds"
                f"{' and folds' if protocol == CV else ''}); p Holm: adjusted with Holm's step-down method over the "
                f"{m} comparison{'s' if m != 1 else ''} of this table{twins} (call a difference significant only if p Holm "
                "< 0.05); ΔDSC = mean paired difference in percentage points."
            )
        else:
            notes.append(f"Paired test skipped: reference model {reference!r} has no finished runs in this table.")
    if not pub.empty:
        protos = ", ".join(sorted(set(pub["protocol"])))
        caveat = "" if protocol in set(pub["protocol"]) else f"; this table's runs use protocol '{protocol}', not directly comparable"
        notes.append(
            f"Rows marked [published] are numbers reported in papers (protocol: {protos}), "
            f"shown as published, never averaged with runs{caveat}."
        )
    if any(k.startswith("dsc_") and k != "dsc_strict" for k in keys):
        notes.append(
            "Organ columns use the class names the dataset registers (Synapse: label ids 1-8 = aorta ... stomach, "
            "the column order of TransUNet's Table 1; TransUNet's repository does not state the ids: check them on "
            "the data)."
        )
    return notes
