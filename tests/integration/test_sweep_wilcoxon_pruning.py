"""A real sweep with ``budget.scheduler: wilcoxon``: a trial clearly worse than the first on its folds is
stopped by Optuna's WilcoxonPruner before its last fold, recorded as pruned, and not retrained."""

from __future__ import annotations

import pytest

from vmbench.search_space import parse_spec

# Two trials, one after the other: the first is the recipe (lr 1e-7, next to untrained: on this tiny
# data it predicts lesion everywhere, a DSC of about 0.2-0.3 per fold); the second, drawn by the
# seeded random sampler, is lr 10, which wrecks the model after one epoch (DSC 0 on every fold).
# At p_threshold 0.3 two folds all worse (exact p = 1/4) are enough to stop it: after 2 of 3 folds.
SWEEP = {
    "experiment": "wx",
    "name": "wx",
    "models": ["unet"],
    "dataset": "synthetic-isic",
    "protocol": "cv",
    "folds": 3,
    "cv_search": "mean",
    "budget": {"trials": 2, "concurrent": 1, "max_epochs": 1, "scheduler": "wilcoxon", "p_threshold": 0.3},
    "resources": {"cpu": 1, "gpu": 0},
    "fixed": {"data": {"img_size": 48, "options": {"n": 24}}, "train": {"batch_size": 8},
              "model": {"overrides": {"base_channels": 8}}, "optim": {"lr": 1e-7}},
    "space": {"optim.lr": {"type": "choice", "values": [1e-7, 10.0]}},
    "final": {"seeds": [1]},
    "sampler": {"name": "random", "seed": 0},
}


@pytest.mark.slow  # Ray start-up, 3 + 2 search fold-epochs and 3 final runs: about 90 s on 2 loaded cores
def test_a_clearly_worse_trial_is_stopped_after_fewer_folds(tmp_path, monkeypatch):
    import mlflow
    import optuna
    from scipy.stats import wilcoxon

    from vmbench import leaderboard as lb
    from vmbench.sweep import run_sweep

    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(SWEEP, source="wx.yaml")
    result = run_sweep(spec, runs_dir=tmp_path / "runs", num_cpus=2, num_gpus=0)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=["wx"])
    assert "RUNNING" not in set(df["status"])
    search = df[df["tags.vmbench.stage"] == "search"].set_index("params.optim.lr")
    assert set(search.index) == {"1e-07", "10.0"}
    good, bad = search.loc["1e-07"], search.loc["10.0"]

    assert good["tags.vmbench.outcome"] == "completed" and good["metrics.epochs"] == 3  # one epoch of each fold
    scores = [good[f"metrics.val_dsc_fold{k}"] for k in range(3)]
    assert good["metrics.val_dsc"] == pytest.approx(sum(scores) / 3)  # the trial's metric: the folds' mean
    assert bad["tags.vmbench.outcome"] == "pruned" and bad["status"] == "FINISHED"
    assert bad["metrics.epochs"] == 2 and bad["metrics.fold"] == 1  # stopped after its second fold
    assert pd_isna(bad.get("metrics.val_dsc_fold2"))
    worse = [bad[f"metrics.val_dsc_fold{k}"] for k in range(2)]
    # Worked out apart from Optuna: both folds worse, one-sided signed-rank p = 1/4 < 0.3.
    p = wilcoxon([w - s for w, s in zip(worse, scores)], alternative="less", zero_method="zsplit").pvalue
    assert p == pytest.approx(0.25) and p < spec.budget.p_threshold

    assert result.studies[0].best == {"optim.lr": 1e-7}  # the complete trial, not the stopped one
    final = df[df["tags.vmbench.stage"] == "final"]
    assert sorted(final["tags.vmbench.fold"]) == ["0", "1", "2"] and set(final["status"]) == {"FINISHED"}
    audit = lb.audit_store(uri).set_index("model")
    assert (audit.loc["unet", "trials"], audit.loc["unet", "pruned"], audit.loc["unet", "search_epochs"]) == (2, 1, 5)
    study = optuna.load_study(study_name="wx__synthetic-isic__unet",
                              storage=f"sqlite:///{tmp_path / 'runs' / 'sweeps' / 'wx' / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "PRUNED"]


def pd_isna(value) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))
