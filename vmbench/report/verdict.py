"""Plain-language verdicts per dataset and protocol that never say more than the statistics do.

Rules:

* a model is called better (or worse) than the reference only when its Holm-adjusted paired
  Wilcoxon p-value is below 0.05; otherwise the text says the difference is not significant and
  that no difference is claimed;
* when the exact signed-rank test cannot reach 0.05 at all with the cases and comparisons at hand
  (:func:`vmbench.statistics.wilcoxon_min_p` times the number of comparisons), the comparison is
  called underpowered; with fewer than 30 cases or 3 seeds, low power is stated;
* unequal search budgets and optimistic protocols (checkpoints selected on the test split) are
  stated next to the result they qualify;
* rank statements come from the bootstrap over cases and say so ("ranks first in 71 % of 1000
  bootstraps"), never as a claim of superiority.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from vmbench.leaderboard.columns import MEASURED
from vmbench.leaderboard.rankings import DatasetRanking
from vmbench.leaderboard.tables import Table
from vmbench.protocols import CV
from vmbench.statistics import wilcoxon_min_p

ALPHA = 0.05
FEW_CASES, FEW_SEEDS = 30, 3


@dataclass
class Verdict:
    dataset: str
    protocol: str
    headline: str
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def comparison_sentence(row: pd.Series, reference: str, m: int, ranking: DatasetRanking | None) -> str:
    """One challenger against the reference, worded by its Holm-adjusted p."""
    model = row["model"]
    if pd.isna(row.get("wilcoxon_p")):
        reason = str(row.get("note") or "no per-case files").replace("paired test skipped: ", "")
        return f"{model} vs {reference}: no paired test ({reason})."
    diff, p, p_holm, n = float(row["dsc_diff_pp"]), float(row["wilcoxon_p"]), float(row["wilcoxon_p_holm"]), int(row["wilcoxon_pairs"])
    stats = (f"{diff:+.2f} pp per-case DSC over {n} paired cases, p = {_p(p)}, "
             f"p = {_p(p_holm)} after Holm over {m} comparison{'s' if m != 1 else ''}")
    if p_holm < ALPHA and diff != 0:
        text = f"{model} is {'better' if diff > 0 else 'worse'} than {reference}: {stats}."
    else:
        text = f"{model} vs {reference}: {stats}: not significant at {ALPHA}, so no difference is claimed."
    if ranking is not None and ranking.stability is not None and model in ranking.stability.p_first.index:
        text += f" {model} ranks first in {_pct(ranking.stability.p_first[model])} of {ranking.stability.n_boot} bootstraps."
    return text


def power_sentence(n_cases: int, m: int, seeds: int, protocol: str) -> str | None:
    """Why the comparisons of a table have little or no power, or None."""
    floor = min(1.0, m * wilcoxon_min_p(n_cases)) if m else 1.0
    if m and floor >= ALPHA:
        return (f"Underpowered: with {n_cases} cases and {m} comparison{'s' if m != 1 else ''} the smallest "
                f"Holm-adjusted p the exact test can reach is {_p(floor)}, so no difference can be declared "
                "whatever the scores.")
    weak = []
    if n_cases < FEW_CASES:
        weak.append(f"{n_cases} cases")
    if seeds < FEW_SEEDS and protocol != CV:
        weak.append(f"{seeds} seed{'s' if seeds != 1 else ''} per model")
    if weak:
        return (f"Low power: only {' and '.join(weak)}; a non-significant result is not evidence that the models "
                "are equal.")
    return None


def table_verdict(table: Table, reference: str | None, ranking: DatasetRanking | None) -> Verdict:
    """The verdict of one measured table (dataset, protocol) of the leaderboard."""
    rows = table.rows[table.rows["kind"] == MEASURED]
    verdict = Verdict(table.dataset, table.protocol, headline="")
    leader = _leader_sentence(rows, ranking)
    details = []
    if reference and (rows["model"] == reference).any():
        challengers = rows[rows["model"] != reference]
        m = int(challengers["wilcoxon_p"].notna().sum())
        details += [comparison_sentence(r, reference, m, ranking) for _, r in challengers.iterrows()]
        n_cases = int(challengers["wilcoxon_pairs"].dropna().min()) if challengers["wilcoxon_pairs"].notna().any() else 0
        power = power_sentence(n_cases, m, int(rows["seeds"].min()), table.protocol) if m else None
        if power:
            verdict.warnings.append(power)
        better = [s for s in details if " is better than " in s or " is worse than " in s]
        verdict.headline = (
            f"{table.dataset} ({table.protocol}): " + (
                "; ".join(s.split(":")[0] for s in better) if better
                else f"no model differs significantly from {reference} after Holm's correction"
            ) + "."
        )
    else:
        why = f"reference {reference!r} has no runs here" if reference else "no reference model chosen"
        verdict.headline = f"{table.dataset} ({table.protocol}): no paired comparison ({why})."
    verdict.details = ([leader] if leader else []) + details
    verdict.warnings += _qualifiers(table, rows)
    return verdict


def _leader_sentence(rows: pd.DataFrame, ranking: DatasetRanking | None) -> str | None:
    if ranking is None:
        return None
    top = ranking.case_mean["mean"].astype(float).idxmax()
    text = (f"Highest mean per-case DSC on {ranking.n_cases} cases: {top} "
            f"({ranking.case_mean.at[top, 'mean']:.2f} %, bootstrap 95 % CI "
            f"[{ranking.case_mean.at[top, 'ci_lo']:.2f}, {ranking.case_mean.at[top, 'ci_hi']:.2f}])")
    stab = ranking.stability
    if stab is not None:
        text += (f"; it ranks first in {_pct(stab.p_first.get(top, float('nan')))} of {stab.n_boot} bootstraps over "
                 f"cases (Kendall's tau with the full ranking: median {stab.tau_median:.2f})")
    return text + ". A highest mean is not a significant difference."


def _qualifiers(table: Table, rows: pd.DataFrame) -> list[str]:
    """Optimistic protocols, unequal budgets and pooled folds, as stated by the table's notes."""
    out = []
    optimistic = int(rows["val_is_test_runs"].sum())
    if optimistic:
        out.append(f"Optimistic protocol: {optimistic} of {int(rows['n'].sum())} runs selected their checkpoint on the "
                   "test split (validation = test); these numbers overstate performance on unseen data.")
    out += [n.replace("WARNING: unequal", "Unequal") for n in table.notes if "unequal budgets" in n]
    if table.protocol == CV:
        folds = int(rows["folds"].max()) if "folds" in rows.columns else 0
        out.append(f"Protocol cv: per-case scores are averaged over {folds} folds and the seeds; fold models share "
                   "training data.")
    return out


def pool_sentence(pool: DatasetRanking) -> str:
    """Protocol cv: what the cross-validation pool adds, with its caveat."""
    top = pool.case_mean["mean"].astype(float).idxmax()
    text = (f"Cross-validation pool ({pool.n_cases} training-pool cases, each scored by the fold that held it out): "
            f"highest mean per-case DSC {top} ({pool.case_mean.at[top, 'mean']:.2f} %)")
    if pool.stability is not None:
        text += f", first in {_pct(pool.stability.p_first.get(top, float('nan')))} of {pool.stability.n_boot} bootstraps"
    return text + (". Each fold selected its checkpoint on these cases, so their scores lean optimistic; the test "
                   "split above is the primary result.")


def verdicts(tables: list[Table], reference: str | None, ranks) -> list[Verdict]:
    """A verdict per measured table (published-only tables have none)."""
    out = []
    for t in tables:
        if not (t.rows["kind"] == MEASURED).any():
            continue
        ranking = ranks.find(t.dataset, t.protocol, "test") if ranks is not None else None
        verdict = table_verdict(t, reference, ranking)
        pool = ranks.find(t.dataset, t.protocol, "cv-val") if ranks is not None and t.protocol == CV else None
        if pool is not None:
            verdict.details.append(pool_sentence(pool))
        out.append(verdict)
    return out
