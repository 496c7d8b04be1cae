"""Multi-objective search: objectives parsed and checked, the Pareto front, a real sweep marking it."""

from __future__ import annotations

import itertools

import pytest

from vmbench.errors import ConfigError
from vmbench.search_space import parse_spec

BASE = {
    "experiment": "mo",
    "name": "mo",
    "models": ["unet"],
    "dataset": "synthetic-isic",
    "metric": ["val_dsc", "n_params"],
    "budget": {"trials": 3, "concurrent": 2, "max_epochs": 1},
    "resources": {"cpu": 1, "gpu": 0},
    "fixed": {"data": {"img_size": 32, "options": {"n": 24}}, "train": {"batch_size": 8}},
    "space": {"model.overrides.base_channels": {"type": "choice", "values": [2, 4, 8]}},
    "final": {"seeds": [1]},
    "sampler": {"name": "random", "seed": 2},
}


def test_objectives_default_modes_and_scheduler():
    spec = parse_spec(BASE, source="mo.yaml")
    assert spec.objectives == ("val_dsc", "n_params") and spec.modes == ("max", "min")
    assert (spec.metric, spec.mode) == ("val_dsc", "max") and spec.multi_objective
    assert spec.scheduler == "fifo"  # no early stopping on one metric of several
    assert "val_dsc (max), n_params (min) together (Pareto front" in spec.plan()
    single = parse_spec({k: v for k, v in BASE.items() if k != "metric"}, source="one.yaml")
    assert single.scheduler == "asha" and not single.multi_objective
    assert single.content_hash() != spec.content_hash()  # --resume refuses a sweep whose objectives changed


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budget": {"trials": 3, "scheduler": "asha"}}, "budget.scheduler: asha stops trials on one metric"),
        ({"mode": ["max"]}, "mode: expected 2 of min/max (one per metric)"),
        ({"mode": ["max", "up"]}, "mode[1]"),
        ({"metric": ["val_dsc", "val_dsc"]}, "with a repeat"),
        ({"metric": ["val_dsc", "bogus"]}, "'bogus' is not reported by trials"),
        ({"metric": "n_params"}, "'n_params' is not reported by trials"),  # a cost alone is not a search
        ({"metric": []}, "expected a metric name or a list"),
    ],
)
def test_bad_objectives_are_one_line_naming_the_key(change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_spec({**BASE, **change}, source="mo.yaml")


def _dominated_brute_force(points, modes):
    """Independent: a point is on the front when no other point is >= in all and > in one objective."""
    better = [(lambda a, b: a >= b) if m == "max" else (lambda a, b: a <= b) for m in modes]
    strictly = [(lambda a, b: a > b) if m == "max" else (lambda a, b: a < b) for m in modes]
    front = []
    for i, p in enumerate(points):
        if not any(all(f(q[k], p[k]) for k, f in enumerate(better)) and any(g(q[k], p[k]) for k, g in enumerate(strictly))
                   for j, q in enumerate(points) if j != i):
            front.append(i)
    return front


def test_pareto_front_matches_brute_force():
    from vmbench.sweep.driver import pareto_front

    points = [(0.9, 100), (0.8, 50), (0.85, 120), (0.7, 10), (0.9, 100), (0.6, 60)]
    assert pareto_front(points, ("max", "min")) == [0, 1, 3, 4]  # by hand: (0.85,120) and (0.6,60) are dominated
    for values in itertools.product([0.1, 0.5, 0.9], [1, 2, 3]):
        cloud = [values, (0.5, 2), (0.9, 3), (0.1, 1)]
        assert pareto_front(cloud, ("max", "min")) == _dominated_brute_force(cloud, ("max", "min"))


@pytest.mark.slow  # a real 3-trial sweep and its final run on 2 cores
def test_a_multi_objective_sweep_marks_its_pareto_trials(tmp_path, monkeypatch):
    import mlflow

    from vmbench.sweep import run_sweep
    from vmbench.sweep.driver import pareto_front

    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = run_sweep(parse_spec(BASE, source="mo.yaml"), runs_dir=tmp_path / "runs", num_cpus=2, num_gpus=0)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=["mo"])
    search = df[(df["tags.vmbench.stage"] == "search") & (df["status"] == "FINISHED")]
    assert len(search) >= 2 and df[df["tags.vmbench.stage"] == "final"]["status"].tolist() == ["FINISHED"]
    points = list(zip(search["metrics.val_dsc"], search["metrics.n_params"]))
    expected = {search["run_id"].iloc[i] for i in pareto_front(points, ("max", "min"))}
    marked = set(df.loc[df.get("tags.vmbench.pareto", "") == "true", "run_id"])
    assert marked == expected and marked
    # The final stage retrains the front's best on the first objective.
    best = search[search["run_id"].isin(marked)].sort_values("metrics.val_dsc").iloc[-1]
    assert result.studies[0].best["model.overrides.base_channels"] == int(best["params.model.overrides.base_channels"])
