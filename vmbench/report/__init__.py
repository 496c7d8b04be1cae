"""``vmbench report``: one self-contained HTML page that answers "is the new model really better?".

The page holds, per dataset and protocol: the leaderboard tables (each naming its protocol), a
plain-language verdict that never claims more than the statistics (no "better" without a
significant Holm-corrected paired test; underpowered comparisons, unequal search budgets and
optimistic protocols said as such), the rankings of challengeR's three schemes with their
bootstrap stability as blob plots, per-case distributions, example segmentations (the same test
images for every model: the reference model's best, median and worst case among the overlays the
runs logged), learning curves (median and range over seeds and folds), accuracy against cost with
the Pareto-optimal models marked (and a multi-objective sweep's search trials on its objectives, its
Pareto-optimal trials marked), and the equal-budget audit of the search. A store without a
sweep is reported from its single ``vmbench train`` runs, labelled not tuned, as the leaderboard
shows them.

Plots are drawn with matplotlib (already a dependency: well kept, renders offline) as inline SVG
with glyphs as paths; the page has inline CSS, no JavaScript, and loads nothing from elsewhere
(no CDN, fonts or images), so it opens anywhere, offline, as one file.

API::

    from vmbench.report import build_report, log_report_to_run, report_for_sweep
    path = build_report("sqlite:///vmbench-runs/mlflow.db", experiments=["vmbench-isic2018"], out="report.html")
    log_report_to_run(mlflow_client, sweep_parent_run_id, path)    # the sweep's parent run keeps a copy
    report_for_sweep(run_sweep(spec), "report.html")  # both, the leaderboard and the verdict on the
                                                      # parent run too (record_on_parent); never raises

Modules: ``collect`` (reads the store once; ``search_front``: the multi-objective searches' trials),
``verdict`` (the wording rules), ``figures`` (SVG), ``page`` (the HTML). The sub-command is :mod:`vmbench.cli.report`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from vmbench import tracking
from vmbench.errors import VmbenchError
from vmbench.io import atomic_write

log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"
LEADERBOARD_ARTIFACT_DIR = "leaderboard"

__all__ = ["LEADERBOARD_ARTIFACT_DIR", "REPORT_ARTIFACT_DIR", "build_report", "log_report_to_run", "record_on_parent",
           "report_for_sweep"]


def build_report(
    tracking_uri: str | None = None,
    experiments: str | Sequence[str] | None = None,
    out: str | Path = "report.html",
    *,
    reference: str | None = "vmunet",
    n_boot: int = 1000,
    seed: int = 0,
    budget_tolerance: float = 0.10,
    data_out: list | None = None,
) -> Path:
    """Write the report of ``experiments`` (default: every active experiment) to ``out``; returns its path.

    ``n_boot``/``seed``: the bootstrap of the rank stability and of the per-case intervals;
    ``budget_tolerance``: the relative spread of search trials or device-hours that is flagged;
    ``data_out``: a list that receives the :class:`~vmbench.report.collect.ReportData` read.
    """
    from vmbench.report.collect import collect
    from vmbench.report.page import render_page

    data = collect(tracking_uri, experiments, reference=reference, n_boot=n_boot, seed=seed,
                   budget_tolerance=budget_tolerance)
    page = render_page(data)
    atomic_write(out, page)
    log.info("report of %d runs written to %s (%.0f kB)", data.runs_read, out, len(page.encode()) / 1024)
    if data_out is not None:
        data_out.append(data)
    return Path(out)


def record_on_parent(client, run_id: str, data) -> None:
    """The sweep's parent run gets the leaderboard (``leaderboard/leaderboard.md`` and ``.csv``) and a
    description that names the outcome as the report's verdicts do (one sentence per dataset)."""
    from vmbench.leaderboard.render import render
    from vmbench.leaderboard.tables import paired_reference
    from vmbench.report.verdict import verdicts

    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in (("md", "md"), ("csv", "csv")):
            path = Path(tmp) / f"leaderboard.{suffix}"
            path.write_text(render(data.board, fmt, ci="primary"))
            client.log_artifact(run_id, str(path), LEADERBOARD_ARTIFACT_DIR)
    items = verdicts(data.tables, paired_reference(data.board), data.ranks)
    lines = [f"- {v.headline}" for v in items] or ["- no finished final runs: nothing to compare."]
    tracking.describe(client, run_id, "\n".join([
        "**Verdict** (Holm-corrected paired tests of per-case DSC on the test split; details in "
        f"`{REPORT_ARTIFACT_DIR}/`):", "", *lines, "",
        f"Leaderboard: `{LEADERBOARD_ARTIFACT_DIR}/leaderboard.md`."]))


def log_report_to_run(client, run_id: str, html_path: str | Path, artifact_path: str = REPORT_ARTIFACT_DIR) -> str:
    """Log the report file as an artifact of ``run_id`` (e.g. a sweep's parent run); returns its artifact path.

    ``client``: an ``mlflow.MlflowClient`` bound to the sweep's store.
    """
    path = Path(html_path)
    client.log_artifact(run_id, str(path), artifact_path)
    return f"{artifact_path}/{path.name}"


def report_for_sweep(sweep, out: str | Path, *, n_boot: int = 1000, file=None) -> Path | None:
    """The report of a finished sweep (a :class:`vmbench.sweep.SweepResult`: its store, experiment
    and parent run), written to ``out`` and logged on the sweep's parent run.

    For the end of ``vmbench sweep`` (as :func:`vmbench.leaderboard.print_for_sweep`): never
    raises, since a sweep that trained for hours must not end in a report traceback. A problem is
    one line on ``file`` (standard error by default); an unexpected error (a bug) also logs its
    traceback. Returns the report's path, or None when it failed.
    """
    file = file or sys.stderr
    try:
        client = tracking.client(sweep.tracking_uri)
        experiment = client.get_experiment(sweep.experiment_id).name
        data: list = []
        path = build_report(sweep.tracking_uri, [experiment], out, reference=sweep.reference, n_boot=n_boot,
                            data_out=data)
        artifact = log_report_to_run(client, sweep.parent_run_id, path)
        record_on_parent(client, sweep.parent_run_id, data[0])
        where = f", logged as {artifact} of sweep run {sweep.parent_run_id}"
        print(f"(report: {path}{where})", file=file)
        return path
    except Exception as err:  # noqa: BLE001 - the sweep's results are saved; see the docstring
        if not isinstance(err, VmbenchError):
            log.warning("report after the sweep failed", exc_info=True)
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"(report failed: {type(err).__name__}: {first})", file=file)
        return None
