"""The report as one self-contained HTML page: inline CSS and inline SVG, no script, nothing fetched."""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging

import pandas as pd

import vmbench
from vmbench.leaderboard.cases import SPLIT_TEXT
from vmbench.leaderboard.render import display_frame
from vmbench.leaderboard.rankings import consensus_frame, ranking_frame, ranking_notes
from vmbench.leaderboard.tables import paired_reference
from vmbench.protocols import metric_column
from vmbench.report import figures
from vmbench.report.collect import ReportData
from vmbench.report.verdict import EFFICIENCY_DEFINITION, verdicts

log = logging.getLogger(__name__)

# (anchor, heading) of every section, in order: the browser test checks each one.
SECTIONS = (
    ("verdicts", "Verdicts"),
    ("leaderboard", "Leaderboard"),
    ("ranks", "Rank stability"),
    ("cases", "Per-case distributions"),
    ("examples", "Example segmentations"),
    ("curves", "Learning curves"),
    ("pareto", "Accuracy versus cost"),
    ("budget", "Budget audit"),
    ("methods", "Methods"),
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:12px;margin:.6em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
p.note{font-size:12px;color:#444;margin:.2em 0} p.warn{font-size:13px;color:#8a4b00;margin:.2em 0}
.verdict{border-left:4px solid #4a78b0;padding:.3em 1em;margin:1em 0;background:#f7f9fc}
.figure{margin:.8em 0} .figure svg{max-width:100%;height:auto}
nav a{margin-right:1em} .meta{font-size:12px;color:#555}
table.examples td{text-align:center;vertical-align:top} table.examples img{width:160px;image-rendering:pixelated}
"""


def _esc(text) -> str:
    return html.escape(str(text))


def _notes(notes, cls: str = "note") -> str:
    return "".join(f'<p class="{"warn" if str(n).startswith("WARNING") else cls}">{_esc(n)}</p>' for n in notes)


def _frame(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0)


def _figure(svg: str, caption: str) -> str:
    return f'<div class="figure" role="img" aria-label="{_esc(caption)}">{svg}</div>'


def _empty(why: str) -> str:
    return f'<p class="note">{_esc(why)}</p>'


def verdict_section(data: ReportData) -> str:
    items = verdicts(data.tables, paired_reference(data.board), data.ranks)
    if not items:
        return _empty("No measured table: nothing to compare.")
    parts = []
    for v in items:
        parts.append(f'<div class="verdict"><h3>{_esc(v.headline)}</h3>')
        parts.append("".join(f"<p>{_esc(d)}</p>" for d in v.details))
        parts.append(_notes(v.warnings, "warn") + "</div>")
    return "".join(parts)


def leaderboard_section(data: ReportData) -> str:
    reference = paired_reference(data.board)
    parts = []
    for t in data.tables:
        parts.append(f"<h3>{_esc(t.title)}</h3>{_notes(t.notes)}")
        parts.append(_frame(display_frame(t, reference, ci="primary")))
    return "".join(parts) or _empty("No finished final runs.")


def ranks_section(data: ReportData) -> str:
    ranks = data.ranks
    if ranks is None or not ranks.tables:
        return _empty("No ranking: it needs per-case files of at least two models on the same cases.")
    parts = []
    for t in ranks.tables:
        parts.append(f"<h3>{_esc(t.title)}</h3>{_notes(ranking_notes(t))}{_frame(ranking_frame(t))}")
        if t.stability is not None:
            parts.append(_figure(figures.blob_plot(t.stability.rank_counts, t.stability.ranks, t.title), f"blob plot {t.title}"))
    for (protocol, split), frame in ranks.consensus.items():
        parts.append(f"<h3>Consensus rank | protocol: {_esc(protocol)} | {_esc(split)}</h3>")
        parts.append(_notes(["Mean aggregate-then-rank rank over the datasets each model was ranked on, ranked again."]))
        parts.append(_frame(consensus_frame(frame)))
    return "".join(parts) + _notes(ranks.skipped)


def cases_section(data: ReportData) -> str:
    if data.cases is None:
        return _empty("No per-case files.")
    parts = []
    for dataset, protocol in sorted({(d, p) for d, p, _ in data.cases.groups}):
        for split in data.cases.splits(protocol):
            table = data.cases.table(dataset, protocol, split)
            if table.scores.empty:
                continue
            unit = "vox" if table.metric.startswith("hd95") else "%"
            scale = 1.0 if unit == "vox" else 100.0
            title = f"{dataset} | protocol: {protocol} | {SPLIT_TEXT.get(split, split)}"
            svg = figures.case_distributions(table.scores * scale, title, f"per-case {table.metric} ({unit})")
            parts.append(f"<h3>{_esc(title)}</h3>" + _figure(svg, f"per-case distribution {title}"))
    return "".join(parts) or _empty("No per-case files in the final runs.")


def examples_section(data: ReportData) -> str:
    if not data.examples:
        return _empty("No example segmentations: they need the test overlays (overlays/test/) of final or single runs.")
    parts = []
    for (dataset, protocol), (chooser, examples) in sorted(data.examples.items()):
        models = sorted({m for e in examples for m in e.images})
        parts.append(f"<h3>{_esc(dataset)} | protocol: {_esc(protocol)} | test split</h3>")
        head = "".join(f"<th>{_esc(m)}</th>" for m in models)
        rows = []
        for e in examples:
            cells = "".join(
                f'<td><img alt="{_esc(m)} on {_esc(e.case)}" src="data:image/png;base64,'
                f'{base64.b64encode(e.images[m]).decode()}"><br>DSC {100 * e.scores.get(m, float("nan")):.1f} %</td>'
                for m in models)
            rows.append(f"<tr><td>{_esc(e.label)} for {_esc(chooser)}<br>{_esc(e.case)}</td>{cells}</tr>")
        parts.append(f'<table class="examples"><tr><th>case</th>{head}</tr>{"".join(rows)}</table>')
    return "".join(parts) + _notes([
        "Each image is the test image with the ground truth in green, the prediction in red and their overlap in "
        "yellow, from each model's first run (by seed). The cases are the best, median and worst per-case DSC of the "
        "named model among the test images every model drew (spread evenly over the test split); the same images "
        "for every model. DSC: the model's per-case score, mean over its runs."
    ])


def curves_section(data: ReportData) -> str:
    curves = data.curves
    if curves.empty:
        return _empty("No per-epoch histories (val_dsc, train_loss) in the final runs.")
    parts = []
    keys = [k for k in ("val_dsc", "train_loss") if (curves["key"] == k).any()]
    for (dataset, protocol), group in curves.groupby(["dataset", "protocol"], sort=True):
        title = f"{dataset} | protocol: {protocol} | final runs"
        parts.append(f"<h3>{_esc(title)}</h3>" + _figure(figures.learning_curves(group, keys, title), f"learning curves {title}"))
    return "".join(parts)


PARETO_COSTS = {
    "params_m": "parameters (M)", "gmacs": "GMACs", "latency_ms_mean": "latency (ms)",
    "device_hours": "device-hours (search + final)",
}


def pareto_points(data: ReportData, dataset: str, protocol: str) -> pd.DataFrame:
    """Measured rows of one table: DSC and the costs (device-hours from the budget audit when known)."""
    rows = data.measured()
    rows = rows[(rows["dataset"] == dataset) & (rows["protocol"] == protocol)]
    points = pd.DataFrame({
        "model": rows["model"], "dsc": rows[f"{metric_column('dsc')}_mean"], "params_m": rows["n_params"] / 1e6,
        "gmacs": rows["gmacs"], "latency_ms_mean": rows["latency_ms_mean"], "device_hours": rows["device_hours_total"],
    }).reset_index(drop=True)
    audit = data.audit
    if not audit.empty:
        total = audit[(audit["dataset"] == dataset) & (audit["protocol"] == protocol)].set_index("model")["device_hours_total"]
        # A model with no sweep behind it (single runs) has an audit total of 0: its runs' own figure stands.
        points["device_hours"] = points["model"].map(total[total > 0]).fillna(points["device_hours"])
    return points


def pareto_section(data: ReportData) -> str:
    rows = data.measured()
    parts = []
    for (dataset, protocol), _ in rows.groupby(["dataset", "protocol"], sort=True):
        points = pareto_points(data, dataset, protocol)
        if points["dsc"].isna().all():
            continue
        title = f"{dataset} | protocol: {protocol} | test DSC (%) against cost"
        svg = figures.pareto_plots(points, PARETO_COSTS, "dsc", "DSC (%)", title)
        parts.append(f"<h3>{_esc(title)}</h3>" + _figure(svg, f"Pareto front {title}"))
    if not parts:
        return _empty("No DSC to plot.")
    return "".join(parts) + _notes([
        "A model is Pareto-optimal on an axis when no other model has both a lower (or equal) cost and a higher (or "
        "equal) DSC, one of them strictly. Means over seeds; the differences between them may not be significant."
    ])


def search_front_section(data: ReportData) -> str:
    """Each multi-objective search's trials on its objectives, its Pareto-optimal trials marked; nothing
    for sweeps of one objective."""
    parts = []
    for front in data.search_fronts:
        pairs = ", ".join(f"{m} ({d})" for m, d in zip(front.objectives, front.modes))
        title = f"{front.dataset} | protocol: {front.protocol} | search trials on {pairs}"
        svg = figures.search_front(front.points, front.objectives, front.modes, title)
        parts.append(f"<h4>{_esc(title)}</h4>" + _figure(svg, f"search Pareto front {title}") + _notes([
            f"{len(front.points)} search trials that finished with every objective logged; {front.n_pareto} "
            "Pareto-optimal in their model's study (tagged vmbench.pareto), ringed and joined per model."]))
    if not parts:
        return ""
    return "<h3>The search's Pareto front (multi-objective sweeps)</h3>" + "".join(parts) + _notes([
        "Each point is a search trial at the end of its budget (validation scores and costs measured on the "
        "trial's own hardware), not a retrained final model. A trial is Pareto-optimal when no trial of the same "
        "study is at least as good on every objective and better on one. With three or more objectives, objective "
        "1 is drawn against each other one, and the step line joins the ringed trials that are not beaten on that "
        "panel's two objectives."])


def pareto_and_search_front(data: ReportData) -> str:
    """The final models' accuracy against cost, then the multi-objective searches' own fronts."""
    return pareto_section(data) + search_front_section(data)


BUDGET_HEADERS = {
    "dataset": "Dataset", "protocol": "Protocol", "model": "Model", "trials": "Trials", "pruned": "Pruned",
    "failed": "Failed", "search_epochs": "Search epochs", "search_device_hours": "Search device-h",
    "final_runs": "Final runs", "final_epochs": "Final epochs", "final_device_hours": "Final device-h",
    "device_hours_total": "Total device-h", "recipe_text": "Best config: farthest from recipe",
    "best_source": "Best config from", "notes": "Notes",
}


def budget_frame(audit: pd.DataFrame) -> pd.DataFrame:
    """The audit's display strings, side by side per model."""
    def number(v, fmt="{:.3g}"):
        return "–" if pd.isna(v) else fmt.format(v)

    shown = audit[list(BUDGET_HEADERS)].copy()
    for col in ("search_device_hours", "final_device_hours", "device_hours_total"):
        shown[col] = audit[col].map(number)
    for col in ("search_epochs", "final_epochs"):
        shown[col] = audit[col].map(lambda v: number(v, "{:.0f}"))
    return shown.rename(columns=BUDGET_HEADERS)


def budget_section(data: ReportData) -> str:
    audit = data.audit
    if audit.empty:
        return _empty("No trial runs.")
    flags = [n for notes in (data.board.attrs.get("budget_flags") or {}).values() for n in notes]
    return _frame(budget_frame(audit)) + _notes(flags) + _notes([
        "Trials: search trials run (Pruned: stopped early by ASHA, or by Optuna's WilcoxonPruner after a fold; Failed: "
        "errored). Epochs and device-hours of the "
        "search come from the trials' own totals or their epoch_time_s history. Farthest from recipe: the searched key "
        "of the best configuration farthest from the registry's published recipe (decades for learning rate and "
        "weight decay, relative difference otherwise).",
        f"Budgets are flagged when search trials or device-hours differ by more than {data.budget_tolerance:.0%} of "
        "the largest in a table (Isensee et al., MICCAI 2024: compute must be reported and matched).",
    ])


def methods_section(data: ReportData) -> str:
    return _notes([
        "Intervals: over seeds, a t-interval on the logit scale for percentages (inside [0, 100]) and on the log scale "
        "for HD95 (above 0); under protocol cv, over seeds of the fold-averaged score. Per-case means: percentile "
        f"bootstrap over cases ({data.n_boot} resamples, seed {data.seed}).",
        "Paired tests: two-sided Wilcoxon signed-rank of per-case DSC against the reference (exact up to 50 cases "
        "without ties), and of each model against its ablation twins (M~no-ssm, M~no-mamba) in the same table, "
        "Holm-corrected together over the comparisons of each table (Holm 1979).",
        "Cost: the cheapest model (parameters, then GMACs) whose paired test against the highest mean DSC is not "
        f"significant after Holm; {EFFICIENCY_DEFINITION}",
        "Ranks: challengeR's aggregate-then-rank, rank-then-aggregate and test-then-rank (Wiesenfarth et al., Sci. Rep. "
        "2021); stability by bootstrap over cases with Kendall's tau-b (Maier-Hein et al., Nat. Commun. 2018); "
        "consensus: mean rank over datasets.",
        "Figures: matplotlib, inline SVG; this page loads nothing from elsewhere and runs no script.",
    ])


def render_page(data: ReportData) -> str:
    """The whole page."""
    builders = {
        "verdicts": verdict_section, "leaderboard": leaderboard_section, "ranks": ranks_section,
        "cases": cases_section, "examples": examples_section, "curves": curves_section, "pareto": pareto_and_search_front, "budget": budget_section,
        "methods": methods_section,
    }
    experiments = ", ".join(data.experiments) or "all active experiments"
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>vmbench report: {_esc(experiments)}</title><style>{_CSS}</style></head><body>",
        "<h1>vmbench report</h1>",
        f'<p class="meta">Store {_esc(data.tracking_uri)}; experiments: {_esc(experiments)}; {data.runs_read} runs read; '
        f"reference {_esc(data.reference)}; generated {generated} by vmbench {_esc(vmbench.__version__)}.</p>",
        "<nav>" + "".join(f'<a href="#{a}">{_esc(h)}</a>' for a, h in SECTIONS) + "</nav>",
    ]
    for anchor, heading in SECTIONS:
        parts.append(f'<section id="{anchor}"><h2>{_esc(heading)}</h2>{builders[anchor](data)}</section>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


__all__ = ["SECTIONS", "pareto_points", "render_page"]
