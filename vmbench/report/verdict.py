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
* rank statements come from the bootstrap over cases and say so ("ranks first in 71% of 1000
  bootstraps"), never as a claim of superiority;
* low power is stated only when some comparison was not significant: it explains a missing
  finding, not a found one. Each table's headline is one sentence: the tests' outcome, the rank
  stability of the highest mean and the caveats that apply;
* an ablation twin (``M~no-ssm``, ``M~no-mamba``) is said to show that the removed part helps only
  when its Holm-adjusted test against ``M`` is significant and the twin is worse; otherwise the text
  says there is no evidence, and that no difference is not equality;
* cost: the cheapest model (parameters, then GMACs) whose test against the best mean is not
  significant after Holm, vmbench's efficiency score (:data:`EFFICIENCY_DEFINITION`) and nnU-Net
  Revisited's memory advice (:func:`resenc_note`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import pandas as pd

from vmbench.leaderboard.columns import MEASURED
from vmbench.leaderboard.paired import CONTROL_NOTE, twin_of
from vmbench.leaderboard.rankings import DatasetRanking, share_text
from vmbench.leaderboard.tables import Table
from vmbench.protocols import CV
from vmbench.statistics import wilcoxon_min_p

ALPHA = 0.05
FEW_CASES, FEW_SEEDS = 30, 3
RESENC_PREFIX, MEMORY_RATIO = "resenc", 2.0
# What each ablation removes, and the part a significant loss shows to help (the sentence's subject).
REMOVED = {"no-ssm": ("state-space recurrence", "the SSM"), "no-mamba": ("whole Mamba mixer", "the Mamba mixer")}
EFFICIENCY_DEFINITION = (
    "efficiency score = mean test DSC (%) / log10(parameters): vmbench's own summary, higher is better (80 % DSC with "
    "10 M parameters scores 80 / 7 = 11.43, with 100 M parameters 80 / 8 = 10.00). U-Bench (Tang et al. 2025, "
    "arXiv:2510.07041) ranks models on accuracy and efficiency together with its U-Score; this is not U-Bench's "
    "formula, which vmbench does not reproduce."
)


@dataclass
class Verdict:
    dataset: str
    protocol: str
    headline: str
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


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
        text += f" {model} ranks first in {share_text(ranking.stability.p_first[model])} of {ranking.stability.n_boot} bootstraps."
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
    """The verdict of one measured table (dataset, protocol) of the leaderboard: a headline sentence
    from the tests, the rank stability and the caveats that apply; the numbers behind it as details."""
    rows = table.rows[table.rows["kind"] == MEASURED]
    verdict = Verdict(table.dataset, table.protocol, headline="")
    caveats, details = [], []
    significant: list[str] = []
    if reference and (rows["model"] == reference).any():
        challengers = rows[(rows["model"] != reference) & rows["note"].fillna("").ne(CONTROL_NOTE)]
        m = holm_family(rows)
        details += [comparison_sentence(r, reference, m, ranking) for _, r in challengers.iterrows()]
        significant = [s.split(":")[0] for s in details if " is better than " in s or " is worse than " in s]
        tested = challengers[challengers["wilcoxon_p"].notna()]
        n_cases = int(tested["wilcoxon_pairs"].min()) if len(tested) else 0
        # Low power qualifies only what was not found: a significant result needs no such excuse.
        power = power_sentence(n_cases, m, int(rows["seeds"].min()), table.protocol) if len(significant) < m else None
        if power:
            verdict.warnings.append(power)
            caveats.append(power.split(":")[0].lower())  # "underpowered" or "low power"
        outcome = "; ".join(significant) if significant else (
            f"no model differs significantly from {reference} after Holm's correction")
    else:
        why = f"reference {reference!r} has no runs here" if reference else "no reference model chosen"
        outcome = f"no paired comparison ({why})"
    twin_rows = rows[rows["ablation_of"].notna()] if "ablation_of" in rows.columns else rows.iloc[0:0]
    if len(twin_rows):
        outcome += "; ablations: " + ", ".join(_ablation_clause(r) for _, r in twin_rows.iterrows())
    leader, stability = _leader(ranking, claimed=bool(significant))
    qualifiers = _qualifiers(table, rows)
    verdict.warnings += qualifiers
    caveats += [short for q in qualifiers for prefix, short in _CAVEATS.items() if q.startswith(prefix)]
    verdict.headline = (f"{table.dataset} ({table.protocol}): {outcome}" + (f"; {stability}" if stability else "")
                        + (f" (caveats: {', '.join(caveats)})" if caveats else "") + ".")
    twins = [ablation_sentence(r) for _, r in twin_rows.iterrows()]
    verdict.details = ([leader] if leader else []) + details + twins + cost_sentences(rows)
    memory = resenc_note(rows, reference)
    if memory:
        verdict.warnings.append(memory)
    return verdict


def holm_family(rows: pd.DataFrame) -> int:
    """The number of comparisons Holm's correction ran over in this table (reference and twin tests)."""
    family = rows["holm_m"].dropna() if "holm_m" in rows.columns else pd.Series(dtype="Int64")
    return int(family.iloc[0]) if len(family) else int(rows["wilcoxon_p"].notna().sum())


def ablation_sentence(row: pd.Series) -> str:
    """Does the removed part help? Worded by the twin's Holm-adjusted test against its model."""
    twin, model = row["model"], row["ablation_of"]
    part, helper = REMOVED[twin_of(twin)[1]]
    if pd.isna(row.get("ablation_p_holm")):
        reason = str(row.get("ablation_note") or "no per-case files").replace("paired test skipped: ", "")
        return f"{twin} vs {model}: no paired test ({reason}), so nothing is said about the {part}."
    diff, p = float(row["ablation_diff_pp"]), float(row["ablation_p_holm"])
    if p < ALPHA and diff < 0:
        return (f"Removing {model}'s {part} ({twin}) costs {-diff:.1f} DSC points (p Holm = {_p(p)}): "
                f"{helper} helps here.")
    if p < ALPHA and diff > 0:
        return (f"Removing {model}'s {part} ({twin}) gains {diff:.1f} DSC points (p Holm = {_p(p)}): "
                f"{helper} does not help here; {model} does better without it.")
    return (f"{twin} is not significantly worse than {model} (Δ {diff:+.1f} pp, p Holm = {_p(p)}): no evidence that "
            f"{helper} helps on this dataset (a non-significant difference is not evidence that they are equal).")


def _ablation_clause(row: pd.Series) -> str:
    """The headline's short form of :func:`ablation_sentence`."""
    model, helper = row["ablation_of"], REMOVED[twin_of(row["model"])[1]][1]
    p, diff = row.get("ablation_p_holm"), row.get("ablation_diff_pp")
    if pd.isna(p):
        return f"{row['model']} not tested"
    if p < ALPHA:
        return f"{helper} {'helps' if diff < 0 else 'hurts'} {model}"
    return f"no evidence that {helper} helps {model}"


def efficiency_score(dsc_pct: float, n_params: float) -> float:
    """:data:`EFFICIENCY_DEFINITION`; NaN without a DSC or with fewer than 10 parameters (log10 <= 1 would
    not be a cost)."""
    if pd.isna(dsc_pct) or pd.isna(n_params) or n_params <= 10:
        return math.nan
    return float(dsc_pct) / math.log10(float(n_params))


def _candidates(rows: pd.DataFrame) -> pd.DataFrame:
    """The models the cost verdict weighs: ablation twins are controls, not candidates."""
    return rows[rows["model"].map(twin_of).isna() & rows["dsc_pct_mean"].notna()]


def cheapest_not_worse(rows: pd.DataFrame) -> pd.Series | None:
    """The cheapest model (parameters, then GMACs) that is the best mean or not significantly worse than
    it (Holm-adjusted p >= 0.05 in the test against the best)."""
    models = _candidates(rows)
    if models.empty or "best_model" not in models.columns or models["best_model"].isna().all():
        return None
    best = models["best_model"].dropna().iloc[0]
    keep = models[(models["model"] == best) | (models["vs_best_p_holm"].astype("float64") >= ALPHA)]
    return _by_cost(keep).iloc[0]


def _by_cost(models: pd.DataFrame) -> pd.DataFrame:
    return models.sort_values(["n_params", "gmacs", "model"], na_position="last")


def cost_sentences(rows: pd.DataFrame) -> list[str]:
    """The cheapest model not significantly worse than the best, and the best efficiency score."""
    out = []
    cheap = cheapest_not_worse(rows)
    if cheap is not None:
        best = cheap["best_model"]
        if cheap["model"] == best:
            ordered = _by_cost(_candidates(rows))
            cheaper = ordered.iloc[: list(ordered["model"]).index(best)]
            untested = cheaper["vs_best_p_holm"].isna()
            why = "; ".join(filter(None, [
                f"cheaper and significantly worse (paired test against it, Holm-corrected): "
                f"{', '.join(cheaper.loc[~untested, 'model'])}" if (~untested).any() else "",
                f"cheaper but not tested against it: {', '.join(cheaper.loc[untested, 'model'])}" if untested.any() else "",
            ])) or "no model is cheaper"
            out.append(f"Cheapest model not significantly worse than the best: {best} itself (highest mean DSC "
                       f"{cheap['dsc_pct_mean']:.2f} %, {_cost(cheap)}); {why}.")
        else:
            out.append(f"Cheapest model not significantly worse than the best ({best}): {cheap['model']} "
                       f"({_cost(cheap)}, mean DSC {cheap['dsc_pct_mean']:.2f} %, p Holm = "
                       f"{_p(float(cheap['vs_best_p_holm']))} against {best}; not significant, which is not "
                       "evidence that they are equal).")
    models = _candidates(rows)
    scores = {m: efficiency_score(d, n) for m, d, n in zip(models["model"], models["dsc_pct_mean"], models["n_params"])}
    scores = {m: v for m, v in scores.items() if not math.isnan(v)}
    if scores:
        top = max(scores, key=scores.get)
        listed = ", ".join(f"{m} {v:.2f}" for m, v in sorted(scores.items(), key=lambda kv: -kv[1]))
        out.append(f"Highest efficiency score: {top} ({listed}); {EFFICIENCY_DEFINITION}")
    return out


def _cost(row: pd.Series) -> str:
    gmacs = "" if pd.isna(row.get("gmacs")) else f", {row['gmacs']:.2f} GMACs"
    params = "parameters not logged" if pd.isna(row.get("n_params")) else f"{row['n_params'] / 1e6:.2f} M parameters"
    return params + gmacs


def resenc_note(rows: pd.DataFrame, reference: str | None) -> str | None:
    """nnU-Net Revisited's advice when the reference's peak memory is more than 2x from the nearest ResEnc's."""
    mem = rows.set_index("model")["peak_mem_mb_max"].astype("float64") if "peak_mem_mb_max" in rows.columns else None
    if mem is None or not reference or pd.isna(mem.get(reference, math.nan)) or mem[reference] <= 0:
        return None
    resenc = mem[mem.index.str.startswith(RESENC_PREFIX) & mem.gt(0)]
    if resenc.empty:
        return None
    # Nearest on the ratio scale: 2x above and 2x below are equally far.
    nearest = (resenc / mem[reference]).map(lambda r: abs(math.log(r))).idxmin()
    ratio = mem[reference] / resenc[nearest]
    if 1 / MEMORY_RATIO <= ratio <= MEMORY_RATIO:
        return None
    return (f"Memory: {reference} peaks at {mem[reference]:.0f} MB, {ratio:.2g}x the {resenc[nearest]:.0f} MB of "
            f"{nearest}, the nearest ResEnc baseline. nnU-Net Revisited (Isensee et al., MICCAI 2024, "
            "arXiv:2404.09556) advises comparing against the ResEnc preset of similar memory (M, L or XL).")


def _leader(ranking: DatasetRanking | None, claimed: bool) -> tuple[str | None, str | None]:
    """The sentence on the highest mean with its bootstrap stability, and the headline's short form."""
    if ranking is None:
        return None, None
    top = ranking.case_mean["mean"].astype(float).idxmax()
    text = (f"Highest mean per-case DSC on {ranking.n_cases} cases: {top} "
            f"({ranking.case_mean.at[top, 'mean']:.2f} %, bootstrap 95 % CI "
            f"[{ranking.case_mean.at[top, 'ci_lo']:.2f}, {ranking.case_mean.at[top, 'ci_hi']:.2f}])")
    stab, short = ranking.stability, None
    if stab is not None:
        share = share_text(stab.p_first.get(top, float("nan")))
        text += (f"; it ranks first in {share} of {stab.n_boot} bootstraps over cases (Kendall's tau with the full "
                 f"ranking: median {stab.tau_median:.2f})")
        short = f"{top} ranks first in {share} of {stab.n_boot} bootstrap resamples of the cases"
    # Without a significant test the highest mean is all there is, and it is no claim.
    return text + ("." if claimed else ": a highest mean, not a significant difference."), short


_CAVEATS = {"Optimistic protocol": "optimistic protocol", "Unequal": "unequal search budgets"}


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
        text += f", first in {share_text(pool.stability.p_first.get(top, float('nan')))} of {pool.stability.n_boot} bootstraps"
    return text + (". Each fold selected its checkpoint on these cases, so their scores lean optimistic; the test "
                   "split above is the primary result.")


def verdicts(tables: list[Table], reference: str | None, ranks) -> list[Verdict]:
    """A verdict per measured table (published-only tables have none)."""
    out = []
    for t in tables:
        if not (t.rows["kind"] == MEASURED).any() or t.is_transfer:
            continue
        ranking = ranks.find(t.dataset, t.protocol, "test") if ranks is not None else None
        verdict = table_verdict(t, reference, ranking)
        pool = ranks.find(t.dataset, t.protocol, "cv-val") if ranks is not None and t.protocol == CV else None
        if pool is not None:
            verdict.details.append(pool_sentence(pool))
        verdict.details += [transfer_sentence(other, reference) for other in tables if other.is_transfer
                            and (other.dataset, other.protocol) == (t.dataset, t.protocol)]
        out.append(verdict)
    return out


def transfer_sentence(table: Table, reference: str | None) -> str:
    """What a transfer table adds to its dataset's verdict: the highest mean DSC on the other
    dataset, what each model keeps of its own test DSC, and the significant differences."""
    rows = table.rows[table.rows["kind"] == MEASURED]
    dsc = rows["dsc_pct_mean"].astype(float)
    text = f"Transfer to {table.scored_on} ({table.scored_split} split, no retraining)"
    if dsc.isna().all():
        return text + ": no DSC logged."
    top = rows.loc[dsc.idxmax()]
    own = float(top.get("own_dsc_pct_mean", float("nan")))
    kept = f" against {own:.2f} % on its own test split" if not math.isnan(own) else ""
    text += f": highest mean DSC {top['model']} ({float(top['dsc_pct_mean']):.2f} %{kept})"
    if reference and (rows["model"] == reference).any():
        found = [f"{r['model']} {'better' if r['dsc_diff_pp'] > 0 else 'worse'} than {reference} "
                 f"({float(r['dsc_diff_pp']):+.2f} pp, p Holm = {_p(float(r['wilcoxon_p_holm']))})"
                 for _, r in rows.iterrows() if r["model"] != reference and pd.notna(r.get("wilcoxon_p_holm"))
                 and float(r["wilcoxon_p_holm"]) < ALPHA and r["dsc_diff_pp"] != 0]
        text += ("; " + "; ".join(found)) if found else f"; no model differs significantly from {reference} after Holm"
    return text + "."
