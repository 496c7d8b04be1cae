"""A final run scored on the search space's ``transfer:`` datasets (U-Bench's zero-shot axis).

The selected model, still in memory after training, is scored on each target's test split with no
retraining: ``eval/<target>-test/`` in the run folder, ``eval_<target>-test_*`` metrics and the
per-case table on the MLflow run, tagged :func:`vmbench.tracking.transfer_tag` (``true``). Each
target's test split is built once on the driver before any trial (:func:`check_transfer_data`), and
each final run checks that the target's folder is on its node before training, so that missing data
fails at once rather than after hours of search. A target whose evaluation fails later is tagged
``failed: <why>`` and logged; the run keeps its own test results.
"""

from __future__ import annotations

import logging
from typing import Any

from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.errors import DataError

log = logging.getLogger("vmbench.sweep")


def _register(target: dict[str, Any]) -> None:
    """A declared target (its format and labels in ``options``) registered in this worker."""
    if target.get("options"):
        from vmbench.registry import declare_dataset

        declare_dataset(target["name"], target["root"], target["options"])


def check_transfer_data(cfg: ExperimentConfig, targets: tuple[dict[str, Any], ...]) -> None:
    """Build each target's test split once on the driver (file listing, no training): a DataError
    naming the target and its folder when it cannot be read."""
    from vmbench.data import dataset_for
    from vmbench.engine.evaluation import transfer_config

    for target in targets:
        try:
            _register(target)
            dataset_for(transfer_config(cfg, target["name"], target["root"], target["options"]), "test")
        except DataError as err:
            raise DataError(f"transfer dataset {target['name']}: {err}") from None


def score_transfer(run: T.TrialRun, cfg: ExperimentConfig, result, device,
                   targets: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """Score ``result.model`` on every target; returns the transfer tags for the run's end."""
    from vmbench.engine import evaluate_transfer, model_from_checkpoint

    tags: dict[str, str] = {}
    model = result.model
    if model is None and targets:  # fit keeps the selected model only when it scored the test split
        model, _, _ = model_from_checkpoint(result.best_checkpoint, device)
    for target in targets:
        name = f"{target['name']}-test"
        try:
            _register(target)
            name, evaluation = evaluate_transfer(
                model, cfg, target["name"], target["root"], target["options"], result.run_dir,
                result.best_checkpoint, result.best_epoch, result.img_size, device)
        except Exception as err:  # the run's own results stand; the failure is on the run and in the log
            log.error("transfer evaluation on %s failed: %s", target["name"], T.error_summary(err))
            tags[T.transfer_tag(name)] = f"failed: {T.error_summary(err)}"[:500]
            continue
        run.log_metrics({f"eval_{name}_{k}": float(v) for k, v in evaluation.summary.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
        out_dir = result.run_dir.eval_dir(name)
        for file in ("per_case.csv", "summary.json"):
            run.log_file(out_dir / file, f"eval/{name}")
        tags[T.transfer_tag(name)] = "true"
    return tags
