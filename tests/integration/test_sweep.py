"""Search-space schema, the Optuna/ASHA interplay, and real small sweeps on local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vmbench.cli import main
from vmbench.config import ConfigError
from vmbench.search_space import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]

GOOD = {
    "experiment": "t",
    "name": "t",
    "models": ["vmunet"],
    "dataset": "synthetic-isic",
    "budget": {"trials": 2, "concurrent": 1, "max_epochs": 2},
    "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
}


def with_change(path: str, value):
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    node = spec
    parts = path.split("/")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is KeyError:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return spec


@pytest.mark.parametrize(
    "change, message",
    [
        (("colour", "red"), r"bad\.yaml: colour: unknown key"),
        (("budget/trials", -1), r"bad\.yaml: budget\.trials: -1 is out of range \(must be >= 1\)"),
        (("budget/trials", "many"), r"bad\.yaml: budget\.trials: expected an integer, got 'many'"),
        (("budget/speed", 1), r"bad\.yaml: budget\.speed: unknown key"),
        (("budget/grace_period", 5), r"budget\.grace_period: \(5\) exceeds budget\.max_epochs"),
        (("space/optim.lr", {"type": "loguniform", "low": 1e-3, "high": 1e-3}), r"space\.optim\.lr: empty range"),
        (("space/optim.lr", {"type": "uniform", "low": "x", "high": 1}), r"space\.optim\.lr\.low: expected a number, got 'x'"),
        (("space/optim.lr", {"type": "normal", "low": 0, "high": 1}), r"space\.optim\.lr\.type: 'normal' is not one of 'uniform'"),
        (("space/optim.lr", {"type": "loguniform", "low": 0.0, "high": 1}), r"log-scale range needs low > 0"),
        (("space/optim.lr", {"type": "choice", "values": []}), r"space\.optim\.lr\.values: expected a non-empty list"),
        (("space/optim.lrr", {"type": "uniform", "low": 0, "high": 1}), r"unknown key 'optim\.lrr'"),
        (("space/train.batch_size", {"type": "choice", "values": [8, "x"]}), r"train\.batch_size: expected an integer"),
        (("models", ["vmunet", "vmunett"]), r"models: unknown model 'vmunett'; did you mean 'vmunet'"),
        (("dataset", "isic2019"), r"datasets: unknown dataset 'isic2019'"),
        (("resources", {"gpu": 1.5}), r"resources\.gpu: fractions are allowed below 1 only"),
        (("resources", {"cpu": -1}), r"resources\.cpu: -1\.0 is out of range \(must be >= 0\)"),
        (("protocol", "leaky"), r"bad\.yaml: protocol: protocol 'leaky' is not one of holdout, paper"),
        (("final", {"seeds": []}), r"final\.seeds: expected a non-empty list of integers"),
        (("sampler", {"name": "bayes"}), r"sampler\.name: 'bayes' is not one of 'tpe', 'random', 'gp', 'cmaes'"),
        (("name", "a/b"), r"name: expected a name of letters"),
        (("per_model", {"unet": {"space": {}}}), r"per_model\.unet: is not one of the sweep's models"),
        (("fixed", {"optim": {"lr": 0.1}}), r"optim\.lr: the fixed value 0\.1 is outside its search space"),
        (("models", KeyError), r"model: is required"),
    ],
)
def test_malformed_space_files_name_file_and_key(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_change(*change)))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_paper_synapse_has_no_validation_metric():
    spec = dict(GOOD, dataset="synapse", protocol="paper", metric="val_dsc")
    with pytest.raises(ConfigError, match="has none"):
        parse_spec(spec, source="x.yaml")
    parse_spec(dict(spec, metric="train_loss"), source="x.yaml")


def test_not_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("space: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_spec(bad)
    assert main(["sweep", "--space", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: no such search-space file" in capsys.readouterr().err


def test_a_fixed_recipe_value_of_a_searched_key_is_the_first_trial():
    spec = parse_spec(dict(GOOD, fixed={"optim": {"lr": 5e-4}}))
    assert spec.studies[0].start_point == {"optim.lr": 5e-4}


def test_numbers_written_like_1e_4_are_accepted():
    spec = parse_spec(dict(GOOD, space={"optim.lr": {"type": "loguniform", "low": "1e-4", "high": "1e-3"}}))
    assert spec.space[0].low == pytest.approx(1e-4)


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_space_files_validate(path, capsys):
    assert main(["sweep", "--space", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "budget per study" in out and "search " in out


def test_dry_run_prints_resolved_config_and_plan(capsys):
    assert main(["sweep", "--space", str(ROOT / "search_spaces" / "quickstart.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "study synthetic-isic x vmunet" in out and "study synthetic-isic x unet" in out
    assert "search model.overrides.drop_path_rate: uniform [0, 0.3]" in out
    assert "data.img_size = 64" in out and "final stage: best configuration retrained with seeds [1, 2]" in out


def test_list_choices_roundtrip_through_optuna():
    from vmbench.search_space import decode_sample, optuna_distributions

    spec = parse_spec(dict(GOOD, space={"model.overrides.depths": {"type": "choice", "values": [[1, 1, 1, 1], [2, 2, 2, 2]]}}))
    dist = optuna_distributions(spec.space)["model.overrides.depths"]
    assert decode_sample(spec.space, {"model.overrides.depths": dist.choices[1]}) == {"model.overrides.depths": [2, 2, 2, 2]}


def test_asha_stopped_trials_are_pruned_not_complete():
    import optuna
    from optuna.trial import TrialState

    from vmbench.search_space import optuna_distributions
    from vmbench.sweep.adapters import PruneAwareOptunaSearch

    spec = parse_spec(GOOD)
    searcher = PruneAwareOptunaSearch(
        space=optuna_distributions(spec.space), metric="val_dsc", mode="max", max_epochs=6,
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    for trial_id in ("stopped", "full", "broken"):
        assert "optim.lr" in searcher.suggest(trial_id)
    for epoch in (1, 2):
        searcher.on_trial_result("stopped", {"val_dsc": 0.1 * epoch, "epoch": epoch})
    searcher.on_trial_complete("stopped", {"val_dsc": 0.2, "epoch": 2})
    for epoch in range(1, 7):
        searcher.on_trial_result("full", {"val_dsc": 0.1 * epoch, "epoch": epoch})
    searcher.on_trial_complete("full", {"val_dsc": 0.6, "epoch": 6})
    searcher.on_trial_result("broken", {"val_dsc": 0.5, "epoch": 1})
    searcher.on_trial_complete("broken", {"val_dsc": 0.5, "epoch": 1}, error=True)
    trials = searcher._ot_study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].value == pytest.approx(0.6)
    # Optuna ranks a pruned trial by its last intermediate value, not as a finished 2-epoch score.
    assert trials[0].intermediate_values == {1: pytest.approx(0.1), 2: pytest.approx(0.2)}



def test_asha_stopped_trial_keeps_the_result_ray_passes_only_to_on_trial_complete():
    import warnings

    import optuna
    from optuna.trial import TrialState

    from vmbench.search_space import optuna_distributions
    from vmbench.sweep.adapters import PruneAwareOptunaSearch

    spec = parse_spec(GOOD)
    searcher = PruneAwareOptunaSearch(
        space=optuna_distributions(spec.space), metric="val_dsc", mode="max", max_epochs=6,
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    for trial_id in ("stopped", "finished"):
        searcher.suggest(trial_id)
    # ASHA stops at the grace period: Ray sends epoch 2's result to on_trial_complete only.
    searcher.on_trial_result("stopped", {"val_dsc": 0.1, "epoch": 1})
    searcher.on_trial_complete("stopped", {"val_dsc": 0.9, "epoch": 2})
    # A trial whose last result already reached on_trial_result: no second report of that step.
    searcher.on_trial_result("finished", {"val_dsc": 0.3, "epoch": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        searcher.on_trial_complete("finished", {"val_dsc": 0.3, "epoch": 1})
    stopped, finished = searcher._ot_study.get_trials(deepcopy=False)
    assert stopped.state == finished.state == TrialState.PRUNED
    assert stopped.intermediate_values == {1: pytest.approx(0.1), 2: pytest.approx(0.9)}
    assert stopped.value == pytest.approx(0.9)  # Optuna's last intermediate value, not epoch 1's
    assert finished.intermediate_values == {1: pytest.approx(0.3)}


@pytest.mark.parametrize(
    "change, message",
    [
        (("metric", "val_dice"), r"bad\.yaml: metric: 'val_dice' is not reported .*synthetic-isic.*choose one of "
                                 r"train_loss, val_loss, val_dsc"),
        (("dataset", "synapse"), None),  # holdout Synapse: val_dsc exists
        ({"dataset": "synapse", "metric": "val_miou"}, r"metric: 'val_miou' is not reported .*synapse.*"
                                                       r"choose one of train_loss, val_dsc, val_dsc_strict$"),
        ({"dataset": "synapse", "protocol": "paper", "metric": "val_dsc"}, r"metric: 'val_dsc' needs a validation split"),
        ({"protocol": "paper", "metric": "val_loss"}, None),  # ISIC's paper protocol validates on test
        ({"metric": "train_loss"}, None),
    ],
)
def test_metric_must_be_one_the_runs_report(tmp_path, change, message):
    spec = with_change(*change) if isinstance(change, tuple) else {**GOOD, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    if message is None:
        load_spec(path)
    else:
        with pytest.raises(ConfigError, match=message):
            load_spec(path)


def test_misspelled_metric_fails_the_dry_run(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(dict(GOOD, metric="val_dice")))
    assert main(["sweep", "--space", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "typo.yaml: metric: 'val_dice'" in err and "val_dsc" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "param, message",
    [
        ({"type": "int", "low": 2, "high": 32, "step": 2, "log": True}, r"space\.train\.batch_size\.step: .*log"),
        ({"type": "int", "low": 2, "high": 32, "log": "false"}, r"space\.train\.batch_size\.log: expected true or false, got 'false'"),
        ({"type": "uniform", "low": 0.1, "high": 0.5, "log": 1}, r"space\.train\.batch_size\.log: expected true or false"),
        ({"type": "loguniform", "low": 0.1, "high": 0.5, "log": False}, r"space\.train\.batch_size\.log: .*loguniform"),
        ({"type": "uniform", "low": 0.1, "high": 0.5, "step": 0.1, "log": True}, r"space\.train\.batch_size\.step: .*log"),
        ({"type": "loguniform", "low": 0.1, "high": 0.5, "step": 0.1}, r"space\.train\.batch_size\.step: .*log"),
        ({"type": "uniform", "low": 0.1, "high": 0.5, "step": 0}, r"space\.train\.batch_size\.step: 0\.0 is out of range"),
        ({"type": "uniform", "low": 0.0, "high": 0.5, "step": 0.2}, r"space\.train\.batch_size\.step: .*multiple of 0\.2"),
        ({"type": "int", "low": 2, "high": 9, "step": 2}, r"space\.train\.batch_size\.step: .*multiple of 2"),
    ],
)
def test_log_and_step_are_checked_where_they_are_written(tmp_path, param, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(dict(GOOD, space={"train.batch_size": param})))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_float_step_and_log_reach_optuna_and_the_plan():
    from vmbench.search_space import optuna_distributions

    spec = parse_spec(dict(GOOD, space={
        "loss.dice_weight": {"type": "uniform", "low": 0.5, "high": 2.0, "step": 0.25},
        "optim.lr": {"type": "uniform", "low": 1e-4, "high": 1e-2, "log": True},
        "train.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8, "log": False},
    }))
    dists = optuna_distributions(spec.space)
    assert dists["loss.dice_weight"].step == pytest.approx(0.25) and not dists["loss.dice_weight"].log
    assert dists["optim.lr"].log and dists["optim.lr"].step is None
    assert dists["train.batch_size"].step == 8 and not dists["train.batch_size"].log
    plan = spec.plan()
    assert "search loss.dice_weight: uniform [0.5, 2] step 0.25\n" in plan
    assert "search optim.lr: uniform [0.0001, 0.01] (log)\n" in plan
    assert "search train.batch_size: int [8, 32] step 8" in plan
    # A fixed recipe value must lie on the step grid to be a valid first trial.
    with pytest.raises(ConfigError, match=r"loss\.dice_weight: the fixed value 0\.6 is outside"):
        parse_spec(dict(GOOD, space={"loss.dice_weight": {"type": "uniform", "low": 0.5, "high": 2.0, "step": 0.25}},
                        fixed={"loss": {"dice_weight": 0.6}}))


@pytest.mark.parametrize("name", ["x'y", "../../x", "a b", ""])
def test_sweep_name_from_the_command_line_is_checked(name, capsys):
    space = str(ROOT / "search_spaces" / "quickstart.yaml")
    assert main(["sweep", "--space", space, "--name", name, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmbench: error: --name: expected a name of letters") and len(err.splitlines()) == 1


def test_sweep_name_from_the_command_line_replaces_the_file_name(capsys):
    space = str(ROOT / "search_spaces" / "quickstart.yaml")
    assert main(["sweep", "--space", space, "--name", "other-1.b", "--dry-run"]) == 0
    assert "sweep 'other-1.b' from" in capsys.readouterr().out


def test_runs_left_running_are_closed_when_tune_itself_raises(isolated_env, monkeypatch):
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.error import TuneError

    from vmbench import tracking as T
    from vmbench.sweep import SweepContext, run_study

    spec = parse_spec(GOOD, source="t.yaml")
    study = spec.studies[0]
    uri = f"sqlite:///{isolated_env / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("t")
    ctx = SweepContext(
        sweep=spec.name, study=study.key, experiment_id=experiment_id, parent_run_id="p", tracking_uri=uri,
        base=study.base.to_dict(), space=study.space, metric=spec.metric, mode=spec.mode, max_epochs=2, cpu=1, gpu=0,
        runs_dir=str(isolated_env), space_hash="h",
    )
    tags = {T.TAG_SWEEP: spec.name, T.TAG_STUDY: study.key, T.TAG_TRIAL_ID: "abc"}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id

    def fit(self):  # what Tune does on a driver-side error, e.g. a result without the metric
        raise TuneError("Trial returned a result which did not include the specified metric(s)")

    monkeypatch.setattr(tune.Tuner, "fit", fit)
    with pytest.raises(TuneError):
        run_study(spec, study, ctx, str(isolated_env / "ray"), resume=False)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["vmbench.outcome"] == "failed"


def macs_by_hand(model, x) -> int:
    """Multiply-accumulates of the convolutions of ``model(x)``, from each layer's shapes (batch 1)."""
    import torch
    from torch import nn

    total = 0

    def count(layer, inputs, output):
        nonlocal total
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, nn.ConvTranspose2d):  # every input element meets the whole kernel
            total += inputs[0].numel() * (layer.out_channels // layer.groups) * kernel
        else:  # every output element is one kernel-sized dot product
            total += output.numel() * (layer.in_channels // layer.groups) * kernel

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.slow  # a real (tiny) final run: MLflow's database set-up and the first optimiser dominate
def test_final_run_costs_are_measured_on_the_input_the_model_is_fed(isolated_env, monkeypatch):
    """Synapse slices reach the model with 1 channel (the models repeat it to 3 themselves); the
    GMACs and the latency of a final run are measured on that input, not on a 3-channel one. (The
    count is the same either way, the repeat being no multiply-accumulate; the hand count checks it.)"""
    import torch
    from mlflow import MlflowClient

    import vmbench
    from vmbench import profiling
    from vmbench.config import ExperimentConfig
    from vmbench.data import build_dataset
    from vmbench.sweep import SweepContext, final_run

    options = {"n_cases": 7, "size": 32, "slices": [4, 6]}  # 2 training, 3 validation, 2 test cases
    cfg = ExperimentConfig.from_dict({
        "model": {"name": "unet", "overrides": {"base_channels": 4}},
        "data": {"name": "synthetic-synapse", "img_size": 32, "options": options},
        "train": {"epochs": 1, "batch_size": 16, "progress": False, "seed": 1},
    })
    fed = build_dataset("synthetic-synapse", split="train", img_size=32, **options)[0]["image"].shape[0]
    assert fed == 1  # what the loader hands the model

    seen: dict[str, set[int]] = {}
    for name in ("count_gmacs", "latency_ms"):
        def measured(model, *args, _name=name, _original=getattr(profiling, name), **kwargs):
            hook = model.register_forward_pre_hook(lambda m, inputs: seen.setdefault(_name, set()).add(inputs[0].shape[1]))
            try:
                return _original(model, *args, **kwargs)
            finally:
                hook.remove()

        monkeypatch.setattr(profiling, name, measured)
    uri = f"sqlite:///{isolated_env / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("costs")
    ctx = SweepContext(
        sweep="costs", study="synthetic-synapse__unet", experiment_id=experiment_id, parent_run_id="p",
        tracking_uri=uri, base=cfg.to_dict(), space=[], metric="val_dsc", mode="max", max_epochs=1, cpu=1, gpu=0,
        runs_dir=str(isolated_env), space_hash="h",
    )
    assert final_run(cfg.to_dict(), ctx, "costs/synthetic-synapse__unet/seed1", str(isolated_env / "final"))["status"] == "FINISHED"
    assert seen == {"count_gmacs": {fed}, "latency_ms": {fed}}
    run = client.search_runs([experiment_id])[0]
    model = vmbench.create_model("unet", num_classes=9, in_chans=3, base_channels=4)
    expected = macs_by_hand(model, torch.zeros(1, fed, 32, 32))
    assert run.data.metrics["gmacs"] == pytest.approx(expected / 1e9, rel=1e-9)


# ------------------------------------------------------------------------------------ real sweeps

TINY = {
    "experiment": "tiny",
    "name": "tiny",
    "models": ["vmunet"],
    "dataset": "synthetic-isic",
    "budget": {"trials": 4, "concurrent": 2, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0.5},
    "fixed": {
        "data": {"img_size": 32, "options": {"n": 30}},
        "train": {"batch_size": 8},
        "model": {"overrides": {"d_state": 4}},
    },
    # Stage widths that do not double cannot be built: those trials fail and the sweep must go on.
    "space": {
        "optim.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3},
        "model.overrides.dims": {"type": "choice", "values": [[8, 16, 32, 64], [8, 16, 32, 60]]},
    },
    "final": {"seeds": [1, 2]},
    "sampler": {"name": "random", "seed": 3},
}


def runs_frame(uri: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_small_sweep_logs_parent_children_and_finals(isolated_env):
    from mlflow import MlflowClient

    from vmbench.sweep import run_sweep

    spec = parse_spec(TINY, source="tiny.yaml")
    runs_dir = isolated_env / "runs"
    # Fake GPUs on a CPU machine: fractional placement is Ray's, the trials still run on the CPU.
    outcomes = run_sweep(spec, runs_dir=runs_dir, num_cpus=2, num_gpus=1).studies
    assert len(outcomes) == 1 and outcomes[0].best["model.overrides.dims"] == [8, 16, 32, 64]
    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    df = runs_frame(uri, "tiny")
    parent = df[df["tags.vmbench.kind"] == "sweep"]
    search = df[df["tags.vmbench.stage"] == "search"]
    final = df[df["tags.vmbench.stage"] == "final"]
    assert len(parent) == 1 and len(search) == 4 and len(final) == 2
    assert (df.loc[df["tags.vmbench.kind"] == "trial", "tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert "RUNNING" not in set(df["status"])
    bad = search["params.model.overrides.dims"] == "[8, 16, 32, 60]"
    assert bad.sum() >= 1 and set(search.loc[bad, "status"]) == {"FAILED"}  # recorded, not lost
    assert set(search.loc[~bad, "status"]) == {"FINISHED"} and (~bad).sum() >= 1
    assert search.loc[bad, "tags.vmbench.error"].str.contains("ValueError").all()
    assert set(search["tags.vmbench.gpu_ids"]) <= {"0"}  # placed on the (fake) GPU
    assert set(final["status"]) == {"FINISHED"} and sorted(final["tags.vmbench.seed"]) == ["1", "2"]
    for column in ("metrics.test_dsc", "metrics.test_miou", "metrics.n_params", "metrics.gmacs", "metrics.latency_ms",
                   "metrics.train_time_s", "metrics.device_hours"):
        assert final[column].notna().all(), column
    for tag in ("vmbench.model", "vmbench.dataset", "vmbench.protocol", "vmbench.scan_backend", "vmbench.hardware",
                "vmbench.version", "vmbench.git_sha"):
        assert df.loc[df["tags.vmbench.kind"] == "trial", f"tags.{tag}"].notna().all(), tag
    client = MlflowClient(uri)
    history = client.get_metric_history(search[search["status"] == "FINISHED"]["run_id"].iloc[0], "train_loss")
    assert sorted(m.step for m in history) in ([1], [1, 2])  # per epoch (ASHA may stop after 1)
    # Every trial's cost, ASHA-pruned and failed ones too, as its latest metrics: the sum of its
    # epoch times (read back from the history), x 0.5 GPU for device-hours, the epochs trained.
    for _, trial in search.iterrows():
        times = client.get_metric_history(trial["run_id"], "epoch_time_s")
        assert trial["metrics.epochs"] == len(times)
        assert trial["metrics.train_time_s"] == pytest.approx(sum(m.value for m in times))
        assert trial["metrics.device_hours"] == pytest.approx(trial["metrics.train_time_s"] / 3600 * 0.5)
    run_id = final["run_id"].iloc[0]
    artifacts = {a.path for a in client.list_artifacts(run_id, "eval")} | {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"eval/per_case.csv", "eval/summary.json", "checkpoints/best.pt"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "overlays/test")]


def test_gpu_request_without_gpus_fails_fast(isolated_env):
    from vmbench.sweep import PreflightError, run_sweep

    spec = parse_spec(dict(TINY, resources={"cpu": 1, "gpu": 1}), source="tiny.yaml")
    with pytest.raises(PreflightError, match=r"resources\.gpu is 1 but the Ray cluster has no GPUs"):
        run_sweep(spec, runs_dir=isolated_env / "runs", num_cpus=1, num_gpus=0)


def test_missing_data_fails_fast(isolated_env):
    from vmbench.data import DataError
    from vmbench.sweep import run_sweep

    fixed = dict(TINY["fixed"], data={"img_size": 32})
    spec = parse_spec(dict(TINY, dataset="isic2018", data_root=str(isolated_env / "nowhere"), fixed=fixed,
                           resources={"cpu": 1, "gpu": 0}), source="tiny.yaml")
    with pytest.raises(DataError, match="nowhere"):
        run_sweep(spec, runs_dir=isolated_env / "runs", num_cpus=1, num_gpus=0)


@pytest.mark.slow
def test_killed_driver_then_resume_logs_each_trial_once(isolated_env):
    from mlflow import MlflowClient

    space = dict(TINY, name="crash", budget=dict(TINY["budget"], max_epochs=3, trials=4),
                 space={"optim.lr": TINY["space"]["optim.lr"]}, resources={"cpu": 1, "gpu": 0})
    space["fixed"] = dict(TINY["fixed"], data={"img_size": 32, "options": {"n": 60}},
                          model={"overrides": {"dims": [8, 16, 32, 64], "d_state": 4}})
    path = isolated_env / "crash.yaml"
    path.write_text(yaml.safe_dump(space))
    runs = isolated_env / "runs"
    cmd = [sys.executable, "-m", "vmbench.cli", "sweep", "--space", str(path), "--runs-dir", str(runs), "--num-cpus", "2",
           "--no-leaderboard"]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    experiment = runs / "ray" / "crash__synthetic-isic__vmunet"
    deadline = time.time() + 240
    try:
        # Kill once the experiment state exists and some trial has checkpointed.
        while time.time() < deadline:
            if (experiment / "tuner.pkl").exists() and list(experiment.glob("*/checkpoint_*")):
                break
            if driver.poll() is not None:
                pytest.fail("the sweep ended before it could be interrupted")
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint within 240 s")
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    df = runs_frame(uri, "tiny")
    trials = df[df["tags.vmbench.stage"] == "search"]
    assert trials["tags.vmbench.trial_id"].is_unique and len(trials) == 4
    assert "RUNNING" not in set(df["status"])
    assert len(df[df["tags.vmbench.stage"] == "final"]) == 2
    assert len(df[df["tags.vmbench.kind"] == "sweep"]) == 1
    # Resumed trials ran some epochs again (from an older checkpoint): each step is logged once.
    client = MlflowClient(uri)
    resumed = 0
    for _, run in df[df["tags.vmbench.kind"] == "trial"].iterrows():
        resumed += int(run.get("tags.vmbench.attempts") or 1) > 1
        for key in client.get_run(run["run_id"]).data.metrics:
            steps = [m.step for m in client.get_metric_history(run["run_id"], key)]
            assert len(steps) == len(set(steps)), (run["tags.vmbench.trial_id"], key, sorted(steps))
    assert resumed >= 1  # the kill caught trials running
