"""The report's figures as inline SVG (matplotlib, Agg backend; glyphs drawn as paths, so no font is needed).

* :func:`case_distributions`: per-case scores per model, box plot with every case as a point;
* :func:`blob_plot`: challengeR's rank-stability blob plot (wiesenfa/challengeR,
  ``inst/appdir/visualizationBlobPlots.Rmd``): models on x in the order of their full-data rank,
  rank on y, disc area = bootstrap frequency of that rank, the median bootstrap rank as a black
  cross and the 2.5-97.5 % range of the bootstrap ranks as a black line;
* :func:`learning_curves`: median over seeds/folds per epoch, with the min-max range shaded;
* :func:`pareto_plots`: accuracy against each cost, Pareto-optimal models marked and joined;
* :func:`search_front`: a multi-objective search's trials, objective 1 against each other one,
  the trials tagged Pareto-optimal ringed and joined by a step line.

Each function returns an SVG string whose element ids carry a per-figure prefix, so that many
figures can sit in one HTML page without id clashes.
"""

from __future__ import annotations

import io
import itertools
import re

import numpy as np
import pandas as pd

from vmbench.statistics import pareto_optimal

_COUNTER = itertools.count()
_ID = re.compile(r'(id="|href="#|url\(#)([^")]+)')


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "svg.hashsalt": "vmbench-report", "font.size": 9})
    return plt


def to_svg(fig) -> str:
    """The figure as an SVG element for inlining: no XML prolog or DOCTYPE, ids prefixed, figure closed."""
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    prefix = f"f{next(_COUNTER)}-"
    return _ID.sub(lambda m: m.group(1) + prefix + m.group(2), text)


MAX_POINTS = 300  # per model in a strip plot; beyond it a seeded sample is drawn (the box uses every case)


def case_distributions(scores: pd.DataFrame, title: str, ylabel: str) -> str:
    """Box plot per model (columns of ``scores``) with the cases drawn as jittered points.

    Above :data:`MAX_POINTS` cases a seeded random sample of them is drawn as points (the title says
    so); the box and whiskers always use every case.
    """
    plt = _pyplot()
    models = list(scores.columns)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(models), 3.4))
    data = [scores[m].dropna().to_numpy() for m in models]
    ax.boxplot(data, showfliers=False, widths=0.55)
    rng = np.random.default_rng(0)  # jitter and sample only: the same picture every time
    for i, values in enumerate(data, start=1):
        shown = values if len(values) <= MAX_POINTS else rng.choice(values, MAX_POINTS, replace=False)
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(shown)), shown, s=9, alpha=0.55, color="tab:blue", zorder=3)
    if any(len(v) > MAX_POINTS for v in data):
        title += f"\n(points: a random {MAX_POINTS} of the cases per model; boxes: all cases)"
    ax.set_xticks(range(1, len(models) + 1), [f"{m}\n({len(v)} cases)" for m, v in zip(models, data)], rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return to_svg(fig)


def blob_plot(rank_counts: pd.DataFrame, full_ranks: pd.Series, title: str) -> str:
    """challengeR's blob plot: for each model (x) the bootstrap frequency of each rank (y) as a disc."""
    plt = _pyplot()
    order = list(full_ranks.sort_values(kind="stable").index)
    counts = rank_counts.loc[order]
    n_boot = int(counts.iloc[0].sum()) if len(counts) else 0
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * len(order), 3.2))
    for x, model in enumerate(order, start=1):
        freq = counts.loc[model] / max(n_boot, 1)
        shown = freq[freq > 0]
        ax.scatter([x] * len(shown), shown.index, s=600 * shown.to_numpy(), color="tab:blue", alpha=0.6, zorder=2)
        ranks = np.repeat(counts.columns.to_numpy(), counts.loc[model].to_numpy())
        if len(ranks):
            lo, hi = np.quantile(ranks, [0.025, 0.975])
            ax.plot([x, x], [lo, hi], color="black", lw=1, zorder=1)
            ax.scatter([x], [np.median(ranks)], marker="x", color="black", s=40, zorder=3)
    ax.set_xticks(range(1, len(order) + 1), order, rotation=20)
    ax.set_yticks(range(1, len(order) + 1))
    ax.set_ylim(len(order) + 0.6, 0.4)  # rank 1 on top
    ax.set_ylabel("rank")
    ax.set_title(f"{title}\n(disc area = share of {n_boot} bootstrap samples; x = median rank, line = 95 %;"
                 " models in full-data rank order)", fontsize=9)
    ax.grid(alpha=0.3)
    return to_svg(fig)


def learning_curves(curves: pd.DataFrame, keys: list[str], title: str) -> str:
    """Per key a panel: for each model the median over runs per epoch, the min-max range shaded."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        part = curves[curves["key"] == key]
        for model, group in part.groupby("model", sort=True):
            per_step = group.groupby("step")["value"]
            steps = per_step.median().index.to_numpy()
            ax.plot(steps, per_step.median().to_numpy(), label=f"{model} ({group['run_id'].nunique()} runs)")
            ax.fill_between(steps, per_step.min().to_numpy(), per_step.max().to_numpy(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if len(part):
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}: median over seeds/folds, shaded min-max", fontsize=9)
    return to_svg(fig)


def pareto_plots(points: pd.DataFrame, costs: dict[str, str], score: str, score_label: str, title: str) -> str:
    """One panel per cost column (``costs``: column -> axis label), ``score`` on y; front marked.

    Each model has its own colour and marker, named once in a legend outside the panels (labels
    beside the points overlap when models have similar costs); the axes have margins so that no
    point sits on a spine, and ``bbox_inches="tight"`` keeps every label inside the image.
    """
    plt = _pyplot()
    models = list(dict.fromkeys(points["model"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style = {m: (colours[i % len(colours)], "osD^v<>ph"[i % 9]) for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, len(costs), figsize=(3.0 * len(costs), 3.0), squeeze=False)
    for ax, (column, label) in zip(axes[0], costs.items()):
        frame = points[["model", column, score]].dropna()
        if frame.empty:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        else:
            best = pareto_optimal(frame[column].to_numpy(), frame[score].to_numpy())
            front = frame[best].sort_values(column)
            ax.plot(front[column], front[score], color="tab:red", lw=1, zorder=1)
            for _, row in frame.iterrows():
                colour, marker = style[row["model"]]
                ax.scatter([row[column]], [row[score]], color=colour, marker=marker, s=40, zorder=2)
            ax.scatter(front[column], front[score], facecolors="none", edgecolors="tab:red", s=160, lw=1.2, zorder=3)
            ax.margins(0.15)
            ax.locator_params(axis="x", nbins=4)  # long tick labels (0.025) stay apart in a narrow panel
        ax.set_xlabel(label)
        ax.set_ylabel(score_label)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker=mk, ls="", label=m) for m, (c, mk) in style.items()]
    handles.append(plt.Line2D([], [], color="tab:red", marker="o", mfc="none", ms=11, lw=1, label="Pareto-optimal"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_svg(fig)


def _front_2d(x: np.ndarray, y: np.ndarray, x_mode: str, y_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The points no other beats on these two objectives, sorted by x (the step line's corners)."""
    best = pareto_optimal(x if x_mode == "min" else -x, y if y_mode == "max" else -y)
    order = np.argsort(x[best], kind="stable")
    return x[best][order], y[best][order]


def search_front(points: pd.DataFrame, objectives: tuple[str, ...], modes: tuple[str, ...], title: str) -> str:
    """A multi-objective search's trials (``points``: ``series``, ``pareto`` and one column per
    objective): objective 1 on y against each other objective on x, one panel each.

    Each series (a model) has its colour and marker; the trials tagged Pareto-optimal in their study
    are ringed in black (per panel and series one line of markers, gid ``pareto-<panel>-<series>``)
    and joined by a step line in the series' colour, the boundary of what they attain. The line runs
    through those of them that no other beats on the panel's two objectives: with two objectives all
    of them; with more, a trial optimal on all of them can be beaten on one panel's pair.
    """
    plt = _pyplot()
    series = list(dict.fromkeys(points["series"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style = {s: (colours[i % len(colours)], "osD^v<>ph"[i % 9]) for i, s in enumerate(series)}
    y, y_mode = objectives[0], modes[0]
    panels = list(zip(objectives[1:], modes[1:]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for k, (ax, (x, x_mode)) in enumerate(zip(axes[0], panels)):
        for i, name in enumerate(series):
            part = points[points["series"] == name]
            colour, marker = style[name]
            ax.scatter(part[x], part[y], color=colour, marker=marker, s=30, alpha=0.7, zorder=2)
            marked = part[part["pareto"]]
            if marked.empty:
                continue
            ax.plot(marked[x], marked[y], ls="", marker="o", ms=11, mfc="none", mec="black", mew=1.1, zorder=3,
                    gid=f"pareto-{k}-{i}")
            fx, fy = _front_2d(marked[x].to_numpy("float64"), marked[y].to_numpy("float64"), x_mode, y_mode)
            # Minimising x, a trial's value holds until the next corner to its right; maximising, to its left.
            ax.step(fx, fy, where="post" if x_mode == "min" else "pre", color=colour, lw=1.2, zorder=1)
        ax.set_xlabel(f"{x} ({x_mode})")
        ax.set_ylabel(f"{y} ({y_mode})")
        ax.margins(0.12)
        ax.locator_params(axis="x", nbins=4)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker=mk, ls="", label=s) for s, (c, mk) in style.items()]
    handles.append(plt.Line2D([], [], color="black", marker="o", mfc="none", ms=11, ls="", label="Pareto-optimal trial"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_svg(fig)
