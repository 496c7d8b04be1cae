"""``vmbench leaderboard``: comparison tables from the MLflow runs of final retrainings.

One row per (dataset, protocol, model) over the seeds of the final runs (``vmbench.stage = final``,
status FINISHED; failed/killed and still-running runs are counted, never averaged; protocol ``cv``:
over folds x seeds): every metric as mean ± sample std with a 95 % interval over seeds that
respects the metric's range (t-interval on the logit scale for fractions, on the log scale for
HD95), the number of seeds, cost (parameters, GMACs, training time, device-hours, latency, peak
memory), a paired Wilcoxon signed-rank test of per-case DSC against a reference model with Holm's
correction per table, a flag when the models' search budgets differ, and the published rows of
the model registry beside them (marked, with their source; never mixed into the means).

Units: the MLflow ``test_*`` metrics are fractions in [0, 1] (HD95 in voxels); the leaderboard
shows them in percent (HD95 in voxels), the unit published tables use, and names the unit in
every column: ``dsc_pct_mean``, ``hd95_vox_mean``.

API::

    runs = load_runs(tracking_uri, dataset="synapse")      # pandas DataFrame, one row per run
    table = leaderboard(runs, reference="vmunet")           # one row per (dataset, protocol, model)
    print(render(table, "md"))
    ranks = rankings(runs, n_boot=1000, seed=0)             # challengeR's schemes + bootstrap stability
    audit = audit_store(tracking_uri)                       # what each model's tuning cost

Modules: ``store`` (MLflow: :func:`load_runs`, its SQLite reader, per-case files), ``history``
(per-epoch metric histories in bulk), ``columns`` (the frame's columns, a dataset's metric set),
``stats`` (interval statistics of the rows), ``cases`` (per-case tables, cross-validation pools),
``paired`` (the Holm-corrected paired tests), ``rankings`` (ranking schemes, bootstrap stability,
consensus), ``budget`` (the equal-budget audit), ``published`` (the registry's published rows),
``board`` (:func:`leaderboard`), ``tables`` (per dataset and protocol), ``render`` and ``plot``
(output), ``summary`` (the table printed after a sweep). The statistics themselves are
:mod:`vmbench.statistics`; the sub-command is :mod:`vmbench.cli.leaderboard`.
``benchmarks/leaderboard_scale.py`` times it on 10,000 runs.
"""

from vmbench.leaderboard.board import case_tables, finished_runs, leaderboard
from vmbench.leaderboard.budget import audit_store, budget_audit, budget_flags
from vmbench.leaderboard.history import metric_histories
from vmbench.leaderboard.plot import plot
from vmbench.leaderboard.rankings import Rankings, rankings
from vmbench.leaderboard.render import display_frame, render, render_rankings
from vmbench.leaderboard.terminal import print_rankings_terminal, print_terminal
from vmbench.leaderboard.store import MlflowPerCaseLoader, load_runs
from vmbench.leaderboard.summary import print_for_sweep
from vmbench.leaderboard.tables import Table, split_tables

__all__ = [
    "MlflowPerCaseLoader",
    "Rankings",
    "Table",
    "audit_store",
    "budget_audit",
    "budget_flags",
    "case_tables",
    "display_frame",
    "finished_runs",
    "leaderboard",
    "load_runs",
    "metric_histories",
    "plot",
    "print_for_sweep",
    "print_rankings_terminal",
    "print_terminal",
    "rankings",
    "render",
    "render_rankings",
    "split_tables",
]
