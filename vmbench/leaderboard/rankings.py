"""Rankings on the per-case tables, their bootstrap stability, and a consensus over datasets.

Per (dataset, protocol, split) with at least two models that have per-case files (the cases
every one of them was scored on; :mod:`vmbench.leaderboard.cases`):

* the three ranking schemes of challengeR (Wiesenfarth et al. 2021, Sci. Rep. 11:2369):
  aggregate-then-rank, rank-then-aggregate and test-then-rank (:mod:`vmbench.statistics`);
* rank stability by bootstrap over the cases (default 1,000 resamples, seeded): each model's rank
  distribution, the fraction of resamples in which it ranks first, and Kendall's tau-b between the
  full-data ranking and each resample's (Maier-Hein et al. 2018, Nat. Commun. 9:5217);
* each model's mean per-case score with a percentile bootstrap interval over its cases.

Across two or more datasets, per (protocol, split): the consensus rank, i.e. the mean of each
model's aggregate-then-rank ranks over the datasets it was ranked on, ranked again.

What these say is limited by the cases: they resample cases, not training runs, so a ranking that
is stable here can still change with another seed or another data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from vmbench.errors import ConfigError
from vmbench.leaderboard.cases import CASE_METRICS, SPLIT_TEXT, CaseTable, CaseTables
from vmbench.statistics import RANKING_SCHEMES, RankStability, bootstrap_mean_ci, bootstrap_rank_stability, consensus_rank

__all__ = ["DatasetRanking", "Rankings", "rank_case_table", "rankings", "rankings_from_cases", "share_text"]

CONSENSUS_SCHEME = "aggregate-then-rank"
METRIC_LABELS = {"dice": "DSC", "iou": "IoU", "hd95": "HD95", "dice_strict": "DSC strict", "hd95_strict": "HD95 strict"}


@dataclass
class DatasetRanking:
    """The rankings of one (dataset, protocol, split)."""

    dataset: str
    protocol: str
    split: str
    metric: str
    n_cases: int
    ranks: pd.DataFrame  # models x schemes (1 = best)
    case_mean: pd.DataFrame  # models: mean, ci_lo, ci_hi (display units), cases
    stability: RankStability | None
    runs: dict[str, str]  # model -> "3 seeds" / "5 folds x 2 seeds"
    notes: list[str] = field(default_factory=list)
    scores: pd.DataFrame | None = None  # the complete cases x models table that was ranked

    @property
    def title(self) -> str:
        return f"{self.dataset} | protocol: {self.protocol} | {SPLIT_TEXT.get(self.split, self.split)}"


@dataclass
class Rankings:
    tables: list[DatasetRanking]
    consensus: dict[tuple[str, str], pd.DataFrame]  # (protocol, split) -> consensus_rank frame
    n_boot: int
    seed: int
    metric: str
    stability_scheme: str
    skipped: list[str] = field(default_factory=list)  # tables that could not be ranked, and why

    def find(self, dataset: str, protocol: str, split: str = "test") -> DatasetRanking | None:
        return next((t for t in self.tables if (t.dataset, t.protocol, t.split) == (dataset, protocol, split)), None)


def _display_scale(metric: str) -> float:
    return 1.0 if metric.startswith("hd95") else 100.0


def rank_case_table(table: CaseTable, n_boot: int = 1000, seed: int = 0,
                    stability_scheme: str = CONSENSUS_SCHEME) -> DatasetRanking | str:
    """The rankings of one case table, or why it cannot be ranked (fewer than two models or cases)."""
    complete = table.complete()
    models = list(complete.columns)
    if len(models) < 2:
        return f"{table.dataset} | {table.protocol} | {table.split}: fewer than two models with per-case files"
    if len(complete) < 2:
        return f"{table.dataset} | {table.protocol} | {table.split}: fewer than two cases shared by every model"
    better = table.higher_is_better
    ranks = pd.DataFrame({name: fn(complete, better) for name, fn in RANKING_SCHEMES.items()})
    stability = bootstrap_rank_stability(complete, stability_scheme, better, n_boot=n_boot, seed=seed) if n_boot else None
    scale = _display_scale(table.metric)
    rows = {}
    for model in models:
        own = table.scores[model].dropna().to_numpy()
        lo, hi = bootstrap_mean_ci(own, n_boot=max(n_boot, 1), seed=seed)
        rows[model] = {"mean": own.mean() * scale, "ci_lo": lo * scale, "ci_hi": hi * scale, "cases": len(own)}
    notes = [f"{m}: {n}" for m, n in table.notes.items()]
    left_out = len(table.scores) - len(complete)
    if left_out:
        notes.append(f"{left_out} cases not scored by every model are left out of the ranks")
    return DatasetRanking(
        table.dataset, table.protocol, table.split, table.metric, len(complete), ranks,
        pd.DataFrame(rows).T, stability, {m: table.runs.get(m, "") for m in models}, notes, complete,
    )


def rankings_from_cases(cases: CaseTables, n_boot: int = 1000, seed: int = 0,
                        stability_scheme: str = CONSENSUS_SCHEME) -> Rankings:
    """Rank every (dataset, protocol, split) of ``cases``; consensus per (protocol, split)."""
    if stability_scheme not in RANKING_SCHEMES:
        raise ConfigError(f"ranking scheme {stability_scheme!r}: expected one of {', '.join(RANKING_SCHEMES)}")
    tables, skipped = [], []
    pairs = sorted({(d, p) for d, p, _ in cases.groups})
    for dataset, protocol in pairs:
        for split in cases.splits(protocol):
            result = rank_case_table(cases.table(dataset, protocol, split), n_boot, seed, stability_scheme)
            (skipped.append(result) if isinstance(result, str) else tables.append(result))
    consensus = {}
    for protocol, split in sorted({(t.protocol, t.split) for t in tables}):
        per_dataset = {t.dataset: t.ranks[CONSENSUS_SCHEME] for t in tables if (t.protocol, t.split) == (protocol, split)}
        if len(per_dataset) >= 2:  # over one dataset a consensus is that dataset's ranking
            consensus[(protocol, split)] = consensus_rank(per_dataset)
    return Rankings(tables, consensus, n_boot, seed, cases.metric, stability_scheme, skipped)


def rankings(
    runs: pd.DataFrame,
    *,
    per_case_loader: Callable[[str], pd.DataFrame | None] | None = None,
    val_loader: Callable[[str], pd.DataFrame | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    metric: str = "dice",
    stability_scheme: str = CONSENSUS_SCHEME,
    stage: str = "final",
) -> Rankings:
    """Rankings of the ``stage`` runs in ``runs`` (:func:`vmbench.leaderboard.load_runs` output): a
    sweep's final runs, or single ``vmbench train`` runs (``stage="single"``).

    ``metric``: the per-case column ranked (``dice`` by default; ``hd95`` ranks lower first).
    Loaders default to MLflow when ``runs.attrs`` names the store (the test split's
    ``eval/per_case.csv`` and, for protocol cv, each fold's ``eval/val/per_case.csv``).
    """
    from vmbench.leaderboard.board import case_tables, finished_runs

    if metric not in CASE_METRICS:
        raise ConfigError(f"per-case metric {metric!r}: expected one of {', '.join(CASE_METRICS)}")
    cases = case_tables(runs, finished_runs(runs, stage), per_case_loader, val_loader, metric)
    if cases is None:
        raise ConfigError("rankings need per-case tables: pass per_case_loader, or runs read by load_runs from a store")
    return rankings_from_cases(cases, n_boot, seed, stability_scheme)


def share_text(p: float) -> str:
    """A share of resamples as a percentage that never rounds a rare event away: 999 of 1000 is
    99.9 %, not 100 %, so it cannot sit beside a rank range that reaches rank 2 (same resamples)."""
    if pd.isna(p):
        return "–"
    for digits in (0, 1):
        text = f"{100 * p:.{digits}f}"
        if (float(text) not in (0.0, 100.0)) or p in (0.0, 1.0):
            return f"{text}%"
    return "<0.1%" if p < 0.5 else ">99.9%"


def ranking_frame(t: DatasetRanking) -> pd.DataFrame:
    """Display strings, one row per model (best first by the stability scheme's full-data rank)."""
    unit = "vox" if t.metric.startswith("hd95") else "%"
    label = METRIC_LABELS.get(t.metric, t.metric)
    stab = t.stability
    order = (stab.ranks if stab is not None else t.ranks[CONSENSUS_SCHEME]).sort_values(kind="stable").index
    rows = []
    for model in order:
        cm = t.case_mean.loc[model]
        row = {
            "Model": model,
            "runs": t.runs.get(model, ""),
            f"mean per-case {label} {unit} [bootstrap 95% CI]": f"{cm['mean']:.2f} [{cm['ci_lo']:.2f}, {cm['ci_hi']:.2f}]",
            **{scheme: str(int(t.ranks.at[model, scheme])) for scheme in t.ranks.columns},
        }
        if stab is not None:
            counts = stab.rank_counts.loc[model]
            spread = [r for r, c in counts.items() if c > 0]
            row["P(rank 1)"] = share_text(stab.p_first[model])
            row["mean rank (bootstrap)"] = f"{stab.mean_rank[model]:.2f}"
            row["rank range (bootstrap)"] = f"{min(spread)}–{max(spread)}" if spread else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def ranking_notes(t: DatasetRanking) -> list[str]:
    """What the ranks are and how far to trust them."""
    label = METRIC_LABELS.get(t.metric, t.metric)
    notes = [
        f"{t.n_cases} cases; ranks 1 = best ({'higher' if CASE_METRICS.get(t.metric, True) else 'lower'} {label} "
        "is better; ties share the best rank). aggregate-then-rank: mean over cases, then rank; rank-then-aggregate: "
        "rank per case, then mean rank; test-then-rank: number of models beaten in one-sided paired Wilcoxon "
        "tests at 0.05, uncorrected as in challengeR's documented example (p.adjust.method = \"none\")."
    ]
    if t.stability is not None:
        tau = t.stability.kendall_tau
        q = np.nanquantile(tau, [0.025, 0.975]) if len(tau) else [np.nan, np.nan]
        notes.append(
            f"Bootstrap over cases ({t.stability.n_boot} resamples, seed {t.stability.seed}, {t.stability.scheme}): "
            "P(rank 1) is the share of these resamples in which the model ranks first, the rank range its lowest "
            "and highest rank over the same resamples; Kendall's tau-b between the full ranking and the "
            f"resamples' rankings: median {t.stability.tau_median:.2f} (95% of resamples in [{q[0]:.2f}, {q[1]:.2f}]). "
            "Cases are resampled, not training runs: seed-to-seed variation is not in these numbers."
        )
    if t.n_cases < 10:
        notes.append(f"Only {t.n_cases} cases: every rank here is fragile.")
    return notes + t.notes


def consensus_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Model": frame.index,
        "consensus rank": frame["consensus_rank"].astype(int).astype(str).to_numpy(),
        "mean rank": [f"{v:.2f}" for v in frame["mean_rank"]],
        "datasets": frame["datasets"].astype(int).astype(str).to_numpy(),
    })
