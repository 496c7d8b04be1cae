"""``vmbench leaderboard --plot FILE.png``: DSC per model and DSC against compute, per table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmbench.errors import ConfigError
from vmbench.io import atomic_path
from vmbench.leaderboard.columns import MEASURED, PRIMARY, PUBLISHED
from vmbench.leaderboard.tables import Table, split_tables
from vmbench.protocols import metric_column


PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def check_plot_path(path: str | Path) -> str:
    """The image format of ``path``'s suffix (png, svg or pdf); anything else is a ConfigError."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise ConfigError(f"--plot {path}: unknown suffix {suffix or '(none)'!r}; use .png, .svg or .pdf")
    return PLOT_FORMATS[suffix]


def plot(board: pd.DataFrame, path: str | Path) -> Path:
    """Per table, DSC mean ± std bars per model, and DSC against GMACs (PNG, SVG or PDF by suffix).

    A panel without data says so instead of staying blank."""
    fmt = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    col = metric_column(PRIMARY)
    tables = [
        t for t in split_tables(board)
        if f"{col}_mean" in t.rows.columns and t.rows.loc[t.rows["kind"] == MEASURED, f"{col}_mean"].notna().any()
    ]
    fig, axes = plt.subplots(max(len(tables), 1), 2, figsize=(12, 4 * max(len(tables), 1)), squeeze=False)
    for (bars, scatter), t in zip(axes, tables):
        _bars(bars, t, col)
        _against_compute(scatter, t, col)
    if not tables:
        for ax in axes[0]:
            _no_data(ax, "no measured DSC to plot (no finished final runs with test_dsc)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=100)
    plt.close(fig)
    return Path(path)


def _bars(ax, t: Table, col: str) -> None:
    """Measured DSC mean ± std per model, published values as crosses over their model."""
    measured = t.rows[t.rows["kind"] == MEASURED]
    published = t.rows[t.rows["kind"] == PUBLISHED]
    x = np.arange(len(measured))
    ax.bar(x, measured[f"{col}_mean"], yerr=measured[f"{col}_std"].fillna(0), capsize=4, color="tab:blue", label="measured (mean ± std)")
    pub_dsc = published.set_index("model")[f"{col}_mean"] if f"{col}_mean" in published.columns else pd.Series(dtype=float)
    px = [i for i, m in enumerate(measured["model"]) if m in pub_dsc.index]
    if px:
        ax.scatter(px, [pub_dsc[measured["model"].iloc[i]] for i in px], marker="x", color="black", zorder=3, label="published")
    ticks = [f"{m}\n(n={int(n)})" for m, n in zip(measured["model"], measured["n"].fillna(0))]
    ax.set_xticks(x, ticks, rotation=30, ha="right")
    ax.set_ylabel("DSC (%)")
    ax.set_title(f"{t.dataset} · protocol {t.protocol}", fontsize=10)
    ax.legend(fontsize=8)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=10)
    ax.set_axis_off()


def _against_compute(ax, t: Table, col: str) -> None:
    measured = t.rows[t.rows["kind"] == MEASURED]
    if measured["gmacs"].isna().all():
        _no_data(ax, f"{t.dataset}: no GMACs logged by these runs (final runs log them)")
        return
    ax.errorbar(measured["gmacs"], measured[f"{col}_mean"], yerr=measured[f"{col}_std"].fillna(0), fmt="o", capsize=3)
    for _, r in measured.iterrows():
        if not pd.isna(r["gmacs"]):
            ax.annotate(r["model"], (r["gmacs"], r[f"{col}_mean"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("GMACs (thop-style, scan excluded)")
    ax.set_ylabel("DSC (%)")
    ax.set_title(f"DSC vs compute · {t.dataset} · protocol {t.protocol}", fontsize=10)
