"""``vmbench leaderboard``: comparison tables from the MLflow runs of final retrainings.

One row per (dataset, protocol, model) over the seeds of the final runs (``vmbench.stage = final``,
status FINISHED; failed/killed and still-running runs are counted, never averaged): every metric
as mean ± sample std with a 95 % t-interval over seeds, the number of seeds, cost (parameters,
GMACs, training time, device-hours, latency, peak memory), a paired Wilcoxon signed-rank test of
per-case DSC against a reference model, and the published rows of the model registry beside them
(marked, with their source; never mixed into the means).

Units: the MLflow ``test_*`` metrics are fractions in [0, 1] (HD95 in voxels); the leaderboard
shows them in percent (HD95 in voxels), the unit published tables use, and names the unit in
every column: ``dsc_pct_mean``, ``hd95_vox_mean``.

API::

    runs = load_runs(tracking_uri, dataset="synapse")      # pandas DataFrame, one row per run
    table = leaderboard(runs, reference="vmunet")           # one row per (dataset, protocol, model)
    print(render(table, "md"))

Modules: ``store`` (MLflow: :func:`load_runs`, its SQLite reader, per-case tables), ``columns``
(the frame's columns, a dataset's metric set), ``stats`` (statistics), ``paired`` (the paired
test), ``published`` (the registry's published rows), ``board`` (:func:`leaderboard`), ``tables``
(per dataset and protocol), ``render`` and ``plot`` (output), ``cli`` (the sub-command).
``benchmarks/leaderboard_scale.py`` times it on 10,000 runs.
"""

from vmbench.leaderboard.board import leaderboard
from vmbench.leaderboard.cli import add_parser, cmd_leaderboard, print_for_sweep
from vmbench.leaderboard.plot import plot
from vmbench.leaderboard.render import display_frame, print_terminal, render
from vmbench.leaderboard.store import MlflowPerCaseLoader, load_runs
from vmbench.leaderboard.tables import Table, split_tables
from vmbench.protocols import metric_column  # re-exported: was part of this module's API
from vmbench.tracking import resolve_tracking_uri  # re-exported: was part of this module's API

__all__ = [
    "MlflowPerCaseLoader",
    "Table",
    "add_parser",
    "cmd_leaderboard",
    "display_frame",
    "leaderboard",
    "load_runs",
    "metric_column",
    "plot",
    "print_for_sweep",
    "print_terminal",
    "render",
    "resolve_tracking_uri",
    "split_tables",
]
