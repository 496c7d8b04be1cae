"""The leaderboard's tables as text: terminal (rich), md, csv, html, latex, json and plain text.

Every format prints the tables of :func:`vmbench.leaderboard.tables.split_tables`, each titled
with its dataset and protocol, notes included. ``csv`` and ``json`` carry the numbers (display
units: percent, HD95 in voxels), the others the formatted cells of :func:`display_frame`.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Callable, Sequence

import pandas as pd

from vmbench.errors import ConfigError
from vmbench.leaderboard.columns import MEASURED, PUBLISHED
from vmbench.leaderboard.tables import Table, paired_reference, split_tables
from vmbench.protocols import metric_column, metric_label

FORMATS = ("terminal", "md", "csv", "html", "latex", "json", "text")
OWN_DSC = "Own test DSC %"  # a transfer table's models on their own dataset's test split


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    return f"{float(value):.{digits}f}"


def _fmt_p(p: Any) -> str:
    if p is None or p is pd.NA or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _count_cells(rows: pd.DataFrame, column: str, is_pub: pd.Series) -> list[str]:
    return [("–" if p else str(int(v))) for p, v in zip(is_pub, rows[column].fillna(0))]


def _metric_cells(rows: pd.DataFrame, key: str, is_pub: pd.Series, pm: str) -> list[str]:
    """'mean ± std' of measured rows (mean alone with one seed), the value of published rows."""
    c = metric_column(key)
    mean, std = rows[f"{c}_mean"], rows.get(f"{c}_std")
    cells = []
    for i in rows.index:
        if pd.isna(mean[i]):
            cells.append("–")
        elif is_pub[i] or std is None or pd.isna(std[i]):
            cells.append(_fmt(mean[i]))
        else:
            cells.append(f"{_fmt(mean[i])} {pm} {_fmt(std[i])}")
    return cells


def _ci_cells(rows: pd.DataFrame, key: str) -> list[str]:
    c = metric_column(key)
    lo, hi = rows.get(f"{c}_ci_lo"), rows.get(f"{c}_ci_hi")
    return ["–" if lo is None or pd.isna(lo[i]) else f"[{_fmt(lo[i])}, {_fmt(hi[i])}]" for i in rows.index]


def display_frame(table: Table, reference: str | None, ci: str = "all", pm: str = "±") -> pd.DataFrame:
    """Strings for printing: metrics as 'mean ± std', CIs as '[lo, hi]', units in the headers.

    ``ci``: 'all' (a CI column per metric), 'primary' (DSC and HD95 only) or 'none'.
    """
    rows = table.rows
    out = pd.DataFrame(index=rows.index)
    is_pub = rows["kind"].eq(PUBLISHED)
    out["Model"] = rows["model"].where(~is_pub, rows["model"] + " [published]")
    out["Protocol"] = rows["protocol"]
    out["n"] = _count_cells(rows, "n", is_pub)
    if "folds" in rows.columns and (rows["folds"].fillna(0) > 0).any():
        out["Folds"] = _count_cells(rows, "folds", is_pub)
    out["Failed"] = _count_cells(rows, "failed", is_pub)
    for column, header in (("running", "Running"), ("pruned", "Pruned")):
        if column in rows.columns and (rows[column].fillna(0) > 0).any():
            out[header] = _count_cells(rows, column, is_pub)
    for key in table.metrics:
        label = metric_label(key)
        out[label] = _metric_cells(rows, key, is_pub, pm)
        if ci == "all" or (ci == "primary" and key in ("dsc", "hd95")):
            out[f"{label} 95% CI"] = _ci_cells(rows, key)
    if table.is_transfer and "own_dsc_pct_mean" in rows.columns:
        out[OWN_DSC] = [_fmt(v) for v in rows["own_dsc_pct_mean"]]
    if reference:
        out[f"p vs {reference}"] = [
            "ref" if (not is_pub[i] and rows["model"][i] == reference) else _fmt_p(rows["wilcoxon_p"][i])
            for i in rows.index
        ]
        if "wilcoxon_p_holm" in rows.columns:
            out["p Holm"] = [
                "ref" if (not is_pub[i] and rows["model"][i] == reference) else _fmt_p(rows["wilcoxon_p_holm"][i])
                for i in rows.index
            ]
        out["pairs"] = ["–" if pd.isna(v) else str(int(v)) for v in rows["wilcoxon_pairs"]]
        out["ΔDSC pp"] = [("–" if pd.isna(v) else f"{v:+.2f}") for v in rows["dsc_diff_pp"]]
    out["Params M"] = [_fmt(v / 1e6) if not pd.isna(v) else "–" for v in rows["n_params"]]
    out["GMACs"] = [_fmt(v) for v in rows["gmacs"]]
    out["Train h"] = [_fmt(v / 3600.0) if not pd.isna(v) else "–" for v in rows["train_time_s_mean"]]
    out["Device-h"] = [_fmt(v) for v in rows["device_hours_mean"]]
    out["Latency ms"] = [_fmt(v, 1) for v in rows["latency_ms_mean"]]
    out["Source"] = rows["source"].fillna("")
    notes = rows["note"].fillna("") if "note" in rows.columns else pd.Series("", index=rows.index)
    if notes.str.len().gt(0).any():
        out["Note"] = notes
    return out.reset_index(drop=True)


ABLATION_TITLE = "Ablations: does the state-space part help?"


def ablation_frame(table: Table) -> pd.DataFrame:
    """One row per twin tested against its model in the table (empty when the table has none)."""
    rows = table.rows[table.rows["kind"].eq(MEASURED)]
    if "ablation_of" not in rows.columns:
        return pd.DataFrame()
    rows = rows[rows["ablation_of"].notna()].sort_values(["ablation_of", "model"])
    return pd.DataFrame({
        "Model": rows["ablation_of"],
        "Twin": rows["model"],
        "ΔDSC pp (twin − model)": [("–" if pd.isna(v) else f"{v:+.2f}") for v in rows["ablation_diff_pp"]],
        "p": [_fmt_p(v) for v in rows["ablation_p"]],
        "p Holm": [_fmt_p(v) for v in rows["ablation_p_holm"]],
        "pairs": ["–" if pd.isna(v) else str(int(v)) for v in rows["ablation_pairs"]],
        "Twin acting params M": [_fmt(v / 1e6) if not pd.isna(v) else "–" for v in rows["n_params_acting"]],
    }).reset_index(drop=True)


def ablation_notes(table: Table) -> list[str]:
    """How the twin tests are made and corrected, and the notes of tests that were skipped."""
    rows = table.rows[table.rows["kind"].eq(MEASURED)]
    m = rows["holm_m"].dropna()
    family = f"{int(m.iloc[0])} comparisons" if len(m) else "the table's comparisons"
    notes = [
        "Each twin (M~no-ssm: state-space recurrence removed; M~no-mamba: whole Mamba mixer removed) against its "
        "model M: two-sided paired Wilcoxon signed-rank test of per-case DSC (cases paired by id, averaged over "
        f"seeds), Holm-corrected in one family with the reference comparisons ({family}). Δ < 0: removing the part "
        "costs DSC. Acting params: the twin's parameters minus those its ablation silences."
    ]
    skipped = rows[rows["ablation_of"].notna() & rows["ablation_p"].isna()]
    notes += [f"{r['model']}: {r['ablation_note'] or 'no paired test'}" for _, r in skipped.iterrows()]
    return notes


def _numeric_records(table: Table) -> pd.DataFrame:
    """The table's numeric rows, without the metric columns that are empty for its dataset."""
    rows = table.rows.drop(columns=[c for c in ("evaluation",) if c in table.rows.columns])
    shown = {metric_column(k) for k in table.metrics}
    drop = [c for c in rows.columns if (m := _metric_of(c)) is not None and m not in shown and rows[c].isna().all()]
    return rows.drop(columns=drop)


def _metric_of(column: str) -> str | None:
    for suffix in ("_mean", "_std", "_ci_lo", "_ci_hi"):
        if column.endswith(suffix) and column.endswith(("_pct" + suffix, "_vox" + suffix)):
            return column[: -len(suffix)]
    return None


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "–": "--", "Δ": r"$\Delta$", "±": r"$\pm$", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}


def _latex_escape(text: str) -> str:
    """LaTeX-safe text; markdown's `code` spans become \\texttt (a bare backtick is an opening quote)."""
    parts = str(text).split("`")
    escaped = ["".join(_LATEX.get(ch, ch) for ch in part) for part in parts]
    if len(parts) % 2 == 0:  # an unpaired backtick: keep it as text
        return r"\textasciigrave{}".join(escaped)
    return "".join(f"\\texttt{{{part}}}" if i % 2 else part for i, part in enumerate(escaped))


# --columns: short keys for the non-metric columns -> (display header, numeric columns, best is lower).
# A metric key (dsc, miou, hd95, hd95_liver ...) shows its mean ± std; METRIC_ci its 95% interval.
FIXED_COLUMNS: dict[str, tuple[str, tuple[str, ...], bool | None]] = {
    "n": ("n", ("n",), None),
    "folds": ("Folds", ("folds",), None),
    "failed": ("Failed", ("failed",), None),
    "p": ("p vs", ("wilcoxon_p",), None),
    "p_holm": ("p Holm", ("wilcoxon_p_holm",), None),
    "pairs": ("pairs", ("wilcoxon_pairs",), None),
    "delta": ("ΔDSC pp", ("dsc_diff_pp",), None),
    "own_dsc": (OWN_DSC, ("own_dsc_pct_mean",), None),  # transfer tables only
    "params": ("Params M", ("n_params",), True),
    "gmacs": ("GMACs", ("gmacs",), True),
    "train_h": ("Train h", ("train_time_s_mean",), True),
    "device_h": ("Device-h", ("device_hours_mean",), True),
    "latency": ("Latency ms", ("latency_ms_mean",), True),
    "source": ("Source", ("source",), None),
}
LATEX_DEFAULT = ("n", "<metrics>", "dsc_ci", "p_holm", "params", "gmacs")  # <metrics>: the table's metric keys
ALPHA = 0.05


def check_columns(columns: Sequence[str] | None, tables: list[Table]) -> None:
    """A one-line error for a --columns key that is neither a fixed column nor a metric of any table."""
    metrics = {k for t in tables for k in t.metrics}
    for key in columns or ():
        metric = key.removesuffix("_ci")
        # Any known metric passes (hd95 with only ISIC tables shows nothing there), typos do not.
        if key not in FIXED_COLUMNS and metric not in metrics and metric_label(metric) == metric:
            raise ConfigError(f"--columns {key}: not a column; choose from {', '.join(FIXED_COLUMNS)}, the tables' "
                              f"metrics ({', '.join(sorted(metrics)) or 'none'}) and METRIC_ci for an interval")


def _table_columns(columns: Sequence[str], table: Table) -> list[str]:
    """The keys that apply to ``table``: metrics it does not show are left out (another dataset's)."""
    keys = []
    for key in columns:
        if key == "<metrics>":
            keys += list(table.metrics)
        elif key in FIXED_COLUMNS or key.removesuffix("_ci") in table.metrics:
            keys.append(key)
    return keys


def _header(key: str, reference: str | None) -> str:
    if key in FIXED_COLUMNS:
        header = FIXED_COLUMNS[key][0]
        return f"p vs {reference}" if key == "p" else header
    metric = key.removesuffix("_ci")
    return f"{metric_label(metric)} 95% CI" if key.endswith("_ci") else metric_label(metric)


def chosen_frame(table: Table, reference: str | None, columns: Sequence[str], pm: str = "±") -> pd.DataFrame:
    """:func:`display_frame` cut to the Model column and ``columns`` (keys, in the order given)."""
    frame = display_frame(table, reference, "all", pm)
    headers = ["Model"] + [_header(k, reference) for k in _table_columns(columns, table)]
    return frame[[h for h in headers if h in frame.columns]]


def _numeric_columns(key: str) -> tuple[str, ...]:
    if key in FIXED_COLUMNS:
        return FIXED_COLUMNS[key][1]
    c = metric_column(key.removesuffix("_ci"))
    return (f"{c}_ci_lo", f"{c}_ci_hi") if key.endswith("_ci") else (f"{c}_mean", f"{c}_std")


def _render_csv(board: pd.DataFrame, tables: list[Table], reference: str | None, ci: str,
                columns: Sequence[str] | None = None) -> str:
    frames = []
    for t in tables:
        records = _numeric_records(t)
        if columns:
            wanted = ["dataset", "protocol", *(["scored_on"] if t.is_transfer else []), "model", "kind"] + [c for k in _table_columns(columns, t)
                                                                 for c in _numeric_columns(k)]
            records = records[[c for c in wanted if c in records.columns]]
        frames.append(records)
    return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""


def _render_json(board: pd.DataFrame, tables: list[Table], reference: str | None, ci: str,
                 columns: Sequence[str] | None = None) -> str:
    payload = {
        "tracking_uri": board.attrs.get("tracking_uri"),
        "search": board.attrs.get("description"),
        "reference": reference,
        "units": {"pct": "percent (MLflow stores fractions)", "vox": "voxels"},
        "columns": {
            "<metric>_ci_lo, <metric>_ci_hi": "95% CI over seeds (protocol cv: over seeds of the fold-averaged "
            "score): t-interval on the logit scale for _pct columns (inside [0, 100]), on the log scale for "
            "_vox columns (above 0), mapped back",
            "wilcoxon_p": "raw two-sided Wilcoxon signed-rank p of per-case DSC against the reference",
            "wilcoxon_p_holm": "wilcoxon_p adjusted with Holm's method over the comparisons of the table",
            "n": "finished final runs (protocol cv: folds x seeds)",
            "scored_on": "empty: the runs' own test split; else a transfer table's dataset (trained on 'dataset')",
            "own_dsc_pct_mean": "transfer tables: the same runs' mean DSC on their own dataset's test split",
        },
        "tables": [
            {
                "dataset": t.dataset,
                "protocol": t.protocol,
                "scored_on": t.scored_on or None,  # a transfer table: the dataset its models were scored on
                "scored_split": t.scored_split or None,
                "title": t.title,
                "notes": t.notes,
                "metrics": {k: metric_column(k) for k in t.metrics},
                "rows": json.loads(_numeric_records(t).to_json(orient="records")),
            }
            for t in tables
        ],
    }
    return json.dumps(payload, indent=2, ensure_ascii=False)


_TEXT_COLUMNS = ("Model", "Protocol", "Source", "Note")


def _frame_for(t: Table, reference: str | None, ci: str, columns: Sequence[str] | None, pm: str = "±") -> pd.DataFrame:
    return chosen_frame(t, reference, columns, pm) if columns else display_frame(t, reference, ci, pm)


def _render_md(board: pd.DataFrame, tables: list[Table], reference: str | None, ci: str,
               columns: Sequence[str] | None = None) -> str:
    parts: list[str] = []
    for t in tables:
        parts.append(f"### {t.title}\n")
        parts += [f"> {n}  " for n in t.notes]
        parts.append("")
        frame = _frame_for(t, reference, ci, columns)
        align = ["left" if c in _TEXT_COLUMNS else "right" for c in frame.columns]
        parts.append(frame.to_markdown(index=False, disable_numparse=True, colalign=align))
        parts.append("")
        twins = ablation_frame(t)
        if not twins.empty:
            parts += [f"#### {ABLATION_TITLE}\n", *[f"> {n}  " for n in ablation_notes(t)], ""]
            align = ["left" if c in ("Model", "Twin") else "right" for c in twins.columns]
            parts += [twins.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
    return "\n".join(parts)


def _render_html(board: pd.DataFrame, tables: list[Table], reference: str | None, ci: str,
                 columns: Sequence[str] | None = None) -> str:
    parts = ['<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>vmbench leaderboard</title></head><body>']
    for t in tables:
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        parts += [f"<p>{html.escape(n)}</p>" for n in t.notes]
        parts.append(_frame_for(t, reference, ci, columns).to_html(index=False, escape=True, border=1))
    parts.append("</body></html>")
    return "\n".join(parts)


def _best_rows(table: Table, frame: pd.DataFrame, key: str, header: str) -> set[int]:
    """Positions of the measured rows holding the column's best value as displayed (ties all bold);
    none for columns without a direction (counts, p-values, intervals) or without two different values."""
    if key in FIXED_COLUMNS:
        lower = FIXED_COLUMNS[key][2]
    else:
        lower = None if key.endswith("_ci") else key.startswith("hd95")
    if lower is None:
        return set()
    measured = table.rows["kind"].eq(MEASURED).to_numpy()
    values = {i: float(cell.split()[0]) for i, cell in enumerate(frame[header])
              if measured[i] and cell not in ("–", "")}
    if len(set(values.values())) < 2:  # one value, or all equal: nothing stands out
        return set()
    best = (min if lower else max)(values.values())
    return {i for i, v in values.items() if v == best}


def _latex_cell(text: str, bold: bool) -> str:
    cell = _latex_escape(text)
    return f"\\textbf{{{cell}}}" if bold and text != "–" else cell


def _render_latex(board: pd.DataFrame, tables: list[Table], reference: str | None, ci: str,
                  columns: Sequence[str] | None = None) -> str:
    """booktabs tables (``\\usepackage{booktabs}``): the model left-aligned, numbers right-aligned, the best
    value of each column in bold, models that differ significantly from the reference marked."""
    parts: list[str] = ["% vmbench leaderboard: needs \\usepackage{booktabs} in the preamble"]
    for t in tables:
        keys = _table_columns(columns or LATEX_DEFAULT, t)
        frame = chosen_frame(t, reference, keys)
        shown = [k for k in keys if _header(k, reference) in frame.columns]
        bold = {k: _best_rows(t, frame, k, _header(k, reference)) for k in shown}
        holm = t.rows["wilcoxon_p_holm"] if "wilcoxon_p_holm" in t.rows.columns else pd.Series(dtype=float)
        marked = set(((holm.astype("float64") < ALPHA) & t.rows["kind"].eq(MEASURED)).to_numpy().nonzero()[0]) \
            if reference and len(holm) else set()
        caption = [_latex_escape(t.title) + "."]
        if any(t.rows["kind"].eq(MEASURED)):
            intervals = " Intervals are 95\\% CIs over seeds." if any(k.endswith("_ci") for k in shown) else ""
            caption.append(f"Mean $\\pm$ standard deviation over seeds.{intervals} Bold: the best measured value of "
                           "each column.")
        if marked:
            caption.append(f"$^{{*}}$: differs from {_latex_escape(reference)} in per-case DSC (two-sided paired "
                           f"Wilcoxon signed-rank test, Holm-corrected over the table's comparisons, $p < {ALPHA}$).")
        label = "tab:vmbench-" + "-".join(_latex_escape(x) for x in (t.dataset, t.protocol)).replace("\\_", "-")
        parts.append("\\begin{table}[ht]\n\\centering\n\\small")
        parts.append(f"\\caption{{{' '.join(caption)}}}\n\\label{{{label}}}")
        parts.append(f"\\begin{{tabular}}{{l{'r' * len(shown)}}}\n\\toprule")
        parts.append(" & ".join(_latex_escape(c) for c in frame.columns) + " \\\\\n\\midrule")
        for i, cells in enumerate(frame.to_dict("records")):
            model = _latex_escape(cells["Model"]) + ("$^{*}$" if i in marked else "")
            values = [_latex_cell(cells[_header(k, reference)], i in bold[k]) for k in shown]
            parts.append(" & ".join([model, *values]) + " \\\\")
        parts.append("\\bottomrule\n\\end{tabular}")
        parts += [f"\\par\\footnotesize {_latex_escape(n)}" for n in t.notes]
        parts.append("\\end{table}\n")
    return "\n".join(parts)


def _render_text(board: pd.DataFrame, tables: list[Table], reference: str | None, ci: str,
                 columns: Sequence[str] | None = None) -> str:
    parts: list[str] = []
    for t in tables:
        parts.append(t.title)
        parts += t.notes
        parts.append(_frame_for(t, reference, ci, columns).to_string(index=False))
        parts.append("")
        twins = ablation_frame(t)
        if not twins.empty:
            parts += [ABLATION_TITLE, *ablation_notes(t), twins.to_string(index=False), ""]
    return "\n".join(parts)


_RENDERERS: dict[str, Callable[..., str]] = {
    "md": _render_md,
    "csv": _render_csv,
    "html": _render_html,
    "latex": _render_latex,
    "json": _render_json,
    "text": _render_text,
}


def render(board: pd.DataFrame, fmt: str = "md", *, ci: str | None = None, columns: Sequence[str] | None = None) -> str:
    """The leaderboard as text: ``md``, ``csv``, ``html``, ``latex``, ``json`` or ``text`` (plain).

    ``columns``: keys of the columns to show after the model (:data:`FIXED_COLUMNS`, metric keys,
    ``METRIC_ci``), in that order; default every column (latex: :data:`LATEX_DEFAULT`). JSON keeps every column.
    """
    if fmt not in _RENDERERS:
        raise ConfigError(f"leaderboard format {fmt!r}: expected one of {', '.join(_RENDERERS)}")
    tables = split_tables(board)
    check_columns(columns, tables)
    return _RENDERERS[fmt](board, tables, paired_reference(board), ci or "all", columns)


# Columns the terminal table drops first when it does not fit (the model, n, the primary metrics, their
# interval and the corrected test stay): the formats written to files always keep every column.
def _ranking_sections(ranks) -> list[tuple[str, list[str], pd.DataFrame]]:
    """(title, notes, display frame) per ranked table, then one per consensus."""
    from vmbench.leaderboard.rankings import consensus_frame, ranking_frame, ranking_notes

    sections = [(f"Ranks | {t.title}", ranking_notes(t), ranking_frame(t)) for t in ranks.tables]
    for (protocol, split), frame in ranks.consensus.items():
        datasets = sorted({t.dataset for t in ranks.tables if (t.protocol, t.split) == (protocol, split)})
        sections.append((
            f"Consensus rank | protocol: {protocol} | {split} | datasets: {', '.join(datasets)}",
            ["Mean of each model's aggregate-then-rank rank over the datasets it was ranked on (column datasets), "
             "ranked again. Datasets weigh equally whatever their number of cases."],
            consensus_frame(frame),
        ))
    if ranks.skipped:
        sections.append(("Not ranked", list(ranks.skipped), pd.DataFrame()))
    return sections


def render_rankings(ranks, fmt: str = "md") -> str:
    """The rankings of :func:`vmbench.leaderboard.rankings` as ``md``, ``text``, ``html`` or ``json``."""
    if fmt == "json":
        return json.dumps(_rankings_payload(ranks), indent=2, ensure_ascii=False)
    parts: list[str] = []
    for title, notes, frame in _ranking_sections(ranks):
        if fmt == "md":
            parts += [f"### {title}\n", *[f"> {n}  " for n in notes], ""]
            parts += [frame.to_markdown(index=False, disable_numparse=True), ""] if not frame.empty else []
        elif fmt == "html":
            parts += [f"<h2>{html.escape(title)}</h2>", *[f"<p>{html.escape(n)}</p>" for n in notes]]
            parts += [frame.to_html(index=False, escape=True, border=1)] if not frame.empty else []
        elif fmt == "text":
            parts += [title, *notes, frame.to_string(index=False) if not frame.empty else "", ""]
        else:
            raise ConfigError(f"--ranks with format {fmt!r}: use terminal, md, text, html or json")
    return "\n".join(parts)


def _rankings_payload(ranks) -> dict:
    def records(frame: pd.DataFrame) -> list[dict]:
        return json.loads(frame.to_json(orient="records"))

    tables = []
    for t in ranks.tables:
        stab = t.stability
        entry = {
            "dataset": t.dataset, "protocol": t.protocol, "split": t.split, "metric": t.metric, "cases": t.n_cases,
            "ranks": records(t.ranks.rename_axis("model").reset_index()),
            "case_mean": records(t.case_mean.rename_axis("model").reset_index()),
            "notes": t.notes,
        }
        if stab is not None:
            entry["bootstrap"] = {
                "scheme": stab.scheme, "n_boot": stab.n_boot, "seed": stab.seed,
                "p_first": stab.p_first.to_dict(), "mean_rank": stab.mean_rank.to_dict(),
                "rank_counts": {m: {str(k): int(v) for k, v in row.items()} for m, row in stab.rank_counts.iterrows()},
                "kendall_tau_median": stab.tau_median,
            }
        tables.append(entry)
    consensus = [
        {"protocol": p, "split": s, "ranks": records(f.rename_axis("model").reset_index())}
        for (p, s), f in ranks.consensus.items()
    ]
    return {"metric": ranks.metric, "tables": tables, "consensus": consensus, "not_ranked": ranks.skipped}
