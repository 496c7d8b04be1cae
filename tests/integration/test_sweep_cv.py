"""Protocol cv in the sweep: the search-space keys, trials that train every fold in step, and a real
cross-validated sweep whose final runs, splits and per-case tables are checked against the data layer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vmbench.config import ConfigError
from vmbench.search_space import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]

GOOD = {
    "experiment": "t",
    "name": "t",
    "models": ["unet"],
    "dataset": "synthetic-isic",
    "protocol": "cv",
    "folds": 3,
    "budget": {"trials": 2, "concurrent": 1, "max_epochs": 2},
    "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
    "final": {"seeds": [1, 2]},
}


@pytest.mark.parametrize(
    "change, drop, message",
    [
        ({"protocol": "holdout"}, (), r"x\.yaml: folds: only protocol cv has folds \(protocol is 'holdout'\)"),
        ({"protocol": "paper", "cv_search": "mean"}, ("folds",), r"x\.yaml: cv_search: only protocol cv"),
        ({"folds": 1}, (), r"x\.yaml: folds: 1 is out of range \(must be >= 2\)"),
        ({"folds": "five"}, (), r"x\.yaml: folds: expected an integer"),
        ({"cv_search": "all"}, (), r"x\.yaml: cv_search: 'all' is not one of 'one-fold', 'mean'"),
        ({"fixed": {"data": {"fold": 1}}}, (), r"x\.yaml: data\.fold: is set by the sweep"),
        ({"space": {"data.folds": {"type": "choice", "values": [3, 5]}}}, (), r"x\.yaml: data\.folds: is set by the sweep"),
    ],
)
def test_cv_keys_are_checked(change, drop, message):
    spec = {k: v for k, v in {**GOOD, **change}.items() if k not in drop}
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec, source="x.yaml")


def test_a_dataset_without_protocol_cv_is_refused(monkeypatch):
    import vmbench

    real = vmbench.dataset_info
    monkeypatch.setattr(vmbench, "dataset_info", lambda name: dataclasses.replace(real(name), protocols=("holdout",)))
    with pytest.raises(ConfigError, match=r"protocol: dataset 'synthetic-isic' does not support protocol 'cv'"):
        parse_spec(GOOD, source="x.yaml")


def test_cv_defaults_studies_and_plan():
    spec = parse_spec({k: v for k, v in GOOD.items() if k != "folds"}, source="x.yaml")
    assert (spec.folds, spec.cv_search) == (5, "one-fold")  # nnU-Net's 5 folds; fold 0 as the proxy
    base = spec.studies[0].base
    assert (base.data.protocol, base.data.fold, base.data.folds) == ("cv", 0, 5)
    plan = spec.plan()
    assert "cross-validation: 5 folds" in plan and "search on fold 0 only (cv_search one-fold" in plan
    assert "retrained on each of the 5 folds x seeds [1, 2] (10 runs)" in plan
    # 2 trials x 2 epochs on one fold; the final stage: 5 folds x 2 seeds x 2 epochs.
    assert "at most 4 search epochs + 20 final epochs" in plan
    mean = parse_spec({**GOOD, "cv_search": "mean"}, source="x.yaml")
    assert "search on the mean over the 3 folds (cv_search mean" in mean.plan()
    assert "at most 12 search epochs + 12 final epochs" in mean.plan()


def test_cv_settings_are_part_of_the_search_identity():
    one = parse_spec(GOOD, source="x.yaml")
    assert one.content_hash() != parse_spec({**GOOD, "cv_search": "mean"}, source="x.yaml").content_hash()
    assert one.content_hash() != parse_spec({**GOOD, "folds": 4}, source="x.yaml").content_hash()


def test_quickstart_cv_file_is_a_small_cv_sweep(capsys):
    from vmbench.cli import main

    spec = load_spec(ROOT / "search_spaces" / "quickstart_cv.yaml")
    assert (spec.protocol, spec.folds, spec.cv_search) == ("cv", 3, "one-fold")
    assert main(["sweep", "--space", str(ROOT / "search_spaces" / "quickstart_cv.yaml"), "--dry-run"]) == 0
    assert "cross-validation: 3 folds" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- in step


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_cfg(folds: int = 2):
    from vmbench.config import ExperimentConfig

    return ExperimentConfig.from_dict({
        "model": {"name": "unet", "overrides": {"base_channels": 4}},
        "data": {"name": "synthetic-isic", "img_size": 32, "options": {"n": 30}, "protocol": "cv", "fold": 0,
                 "folds": folds},
        "train": {"epochs": 2, "batch_size": 8, "progress": False, "seed": 3},
    })


@pytest.mark.slow  # four 2-epoch fits (the folds in step, then each alone): about 40 s in a fresh process
def test_mean_search_reports_the_mean_of_the_folds_each_trained_alone(cache):
    """Every fold trained in step by one trial follows its own trajectory exactly: the trial's
    per-epoch metrics are the means of what ``fit`` reports for each fold alone."""
    from vmbench.engine import fit, fit_all
    from vmbench.rundir import RunDir
    from vmbench.sweep.folds import trial_parts

    parts = trial_parts(tiny_cfg(), "mean", RunDir(cache / "trial"))
    assert [(p.name, p.cfg.data.fold, p.run_dir.root.name) for p in parts] == [("fold0", 0, "fold0"), ("fold1", 1, "fold1")]
    reported = []
    results = fit_all([(p.cfg, p.run_dir) for p in parts],
                      lambda step: reported.append((step.epoch, [r.metrics for r in step.results])), evaluate_test=False)
    assert [epoch for epoch, _ in reported] == [1, 2] and len(results) == 2
    alone = []
    for fold in (0, 1):
        cfg = tiny_cfg().with_overrides({"data.fold": fold})
        alone.append(fit(cfg, cache / f"alone{fold}", evaluate_test=False).history)
    from vmbench.sweep.folds import combine

    for epoch, per_fold in reported:
        for fold in (0, 1):
            assert per_fold[fold]["val_dsc"] == pytest.approx(alone[fold][epoch - 1]["val_dsc"], abs=1e-6)
            assert per_fold[fold]["train_loss"] == pytest.approx(alone[fold][epoch - 1]["train_loss"], rel=1e-5)
        combined = combine(per_fold, "val_dsc")
        assert combined["val_dsc"] == pytest.approx((per_fold[0]["val_dsc"] + per_fold[1]["val_dsc"]) / 2)
        assert combined["val_dsc_fold1"] == per_fold[1]["val_dsc"]
        assert combined["epoch_time_s"] == pytest.approx(per_fold[0]["epoch_time_s"] + per_fold[1]["epoch_time_s"])


def test_trial_costs_add_every_epoch_of_every_fold():
    from vmbench.sweep.folds import trial_costs

    histories = [[{"epoch_time_s": 2.0}, {"epoch_time_s": 3.0}], [{"epoch_time_s": 4.0}, {"epoch_time_s": 5.0}]]
    assert trial_costs(histories, gpu=0.5) == {"train_time_s": 14.0, "device_hours": 14.0 / 3600 * 0.5, "epochs": 4}
    assert trial_costs(histories[:1], gpu=0)["device_hours"] == 5.0 / 3600  # a CPU trial counts one device


def test_a_retried_mean_trial_gets_every_folds_checkpoint_back(tmp_path):
    """The Tune checkpoint of a cv_search mean trial holds <fold>/last.pt for every fold."""
    from ray import tune

    from vmbench.rundir import RunDir
    from vmbench.sweep.folds import trial_parts
    from vmbench.sweep.trainable import _restore_checkpoint

    saved = tmp_path / "saved"
    for fold in range(3):
        (saved / f"fold{fold}").mkdir(parents=True)
        (saved / f"fold{fold}" / "last.pt").write_bytes(f"last {fold}".encode())
    parts = trial_parts(tiny_cfg(3), "mean", RunDir(tmp_path / "work"))
    assert _restore_checkpoint(tune.Checkpoint.from_directory(saved), parts)
    assert [(tmp_path / "work" / p.name / "checkpoints" / "last.pt").read_bytes() for p in parts] == [b"last 0", b"last 1", b"last 2"]
    (saved / "fold2" / "last.pt").unlink()  # one fold missing: the trial starts over rather than mix epochs
    assert not _restore_checkpoint(tune.Checkpoint.from_directory(saved), trial_parts(tiny_cfg(3), "mean", RunDir(tmp_path / "w2")))


# ------------------------------------------------------------------------------------------ a real sweep

CV_SWEEP = {
    "experiment": "cv",
    "name": "cv",
    "models": ["unet"],
    "dataset": "synthetic-isic",
    "protocol": "cv",
    "folds": 3,
    "cv_search": "mean",
    "budget": {"trials": 2, "concurrent": 2, "max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "fixed": {"data": {"img_size": 64, "options": {"n": 40}}, "train": {"batch_size": 8},
              "model": {"overrides": {"base_channels": 8}}},
    "space": {"optim.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3}},
    "final": {"seeds": [1]},
    "sampler": {"name": "random", "seed": 0},
}


def _csv_ids(client, run_id: str, path: str, dst: Path) -> list[str]:
    import pandas as pd

    local = client.download_artifacts(run_id, path, str(dst))
    return sorted(pd.read_csv(local, dtype={"id": str})["id"].unique())


@pytest.mark.slow  # Ray start-up, two 3-fold trials and three final runs: about 2 minutes on 2 loaded cores
def test_cv_sweep_trains_every_fold_and_keeps_the_test_split_apart(cache):
    import mlflow
    from mlflow import MlflowClient

    from vmbench.data import build_dataset
    from vmbench.sweep import run_sweep

    spec = parse_spec(CV_SWEEP, source="cv.yaml")
    runs_dir = cache / "runs"
    run_sweep(spec, runs_dir=runs_dir, num_cpus=2, num_gpus=0)
    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=["cv"])
    client = MlflowClient(uri)
    assert "RUNNING" not in set(df["status"])

    # The pool and the test split, from the data layer under protocol holdout (not the sweep).
    holdout = dict(img_size=64, n=40, protocol="holdout")
    pool = set(build_dataset("synthetic-isic", split="train", **holdout).ids)
    pool |= set(build_dataset("synthetic-isic", split="val", **holdout).ids)
    test_ids = sorted(build_dataset("synthetic-isic", split="test", **holdout).ids)

    parent = df[df["tags.vmbench.kind"] == "sweep"].iloc[0]
    assert (parent["tags.vmbench.folds"], parent["tags.vmbench.cv_search"]) == ("3", "mean")
    on_parent = json.loads(Path(client.download_artifacts(parent["run_id"], "splits.json", str(cache))).read_text())
    in_folder = json.loads((runs_dir / "sweeps" / "cv" / "splits.json").read_text())
    assert on_parent == in_folder and on_parent["folds"] == 3
    splits = on_parent["datasets"]["synthetic-isic"]
    vals = [set(f["val"]) for f in splits["folds"]]
    assert sum(len(v) for v in vals) == len(pool) and set().union(*vals) == pool  # a partition of the pool
    for fold in splits["folds"]:
        assert set(fold["train"]) == pool - set(fold["val"])
    assert splits["test"] == test_ids and not pool & set(test_ids)

    search = df[df["tags.vmbench.stage"] == "search"]
    assert len(search) == 2 and set(search["tags.vmbench.cv_search"]) == {"mean"}
    assert "tags.vmbench.fold" not in search or search["tags.vmbench.fold"].isna().all()  # scored on every fold
    for _, run in search.iterrows():  # scored on the mean of the three folds; three fold-epochs paid for
        folds = [run[f"metrics.val_dsc_fold{k}"] for k in range(3)]
        assert run["metrics.val_dsc"] == pytest.approx(sum(folds) / 3)
        assert run["metrics.epochs"] == 3 and run["metrics.train_time_s"] > 0

    final = df[df["tags.vmbench.stage"] == "final"]
    assert sorted(final["tags.vmbench.fold"]) == ["0", "1", "2"] and set(final["tags.vmbench.folds"]) == {"3"}
    assert set(final["tags.vmbench.seed"]) == {"1"} and set(final["status"]) == {"FINISHED"}
    assert sorted(final["tags.vmbench.final_key"]) == [f"cv/synthetic-isic__unet/fold{k}/seed1" for k in range(3)]
    for _, run in final.iterrows():
        fold = int(run["tags.vmbench.fold"])
        dst = cache / f"dl{fold}"
        assert _csv_ids(client, run["run_id"], "eval/val/per_case.csv", dst) == sorted(splits["folds"][fold]["val"])
        assert _csv_ids(client, run["run_id"], "eval/per_case.csv", dst) == test_ids  # the test split untouched
        assert run["metrics.test_dsc"] >= 0 and 0 <= run["metrics.best_val_dsc"] <= 1


def test_synapse_folds_keep_volumes_whole_and_a_fold_final_run_scores_its_val_cases(cache):
    from mlflow import MlflowClient

    from vmbench.data import build_dataset
    from vmbench.sweep import SweepContext, check_data, final_run

    options = {"n_cases": 7, "size": 32, "slices": [4, 6]}  # 5 training cases (the pool), 2 test cases
    spec = parse_spec({
        **GOOD, "dataset": "synthetic-synapse", "folds": 2, "budget": {"trials": 1, "max_epochs": 1},
        "fixed": {"data": {"img_size": 32, "options": options}, "train": {"batch_size": 16},
                  "model": {"overrides": {"base_channels": 4}}},
    }, source="syn.yaml")
    holdout = dict(img_size=32, protocol="holdout", **options)
    pool = set(build_dataset("synthetic-synapse", split="train", **holdout).cases)
    pool |= set(build_dataset("synthetic-synapse", split="val", **holdout).ids)
    test_ids = sorted(build_dataset("synthetic-synapse", split="test", **holdout).ids)
    splits = check_data(spec)["datasets"]["synthetic-synapse"]
    assert len(pool) == 5 and sorted(v for f in splits["folds"] for v in f["val"]) == sorted(pool)  # whole cases
    assert splits["test"] == test_ids

    uri = f"sqlite:///{cache / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).create_experiment("syn")
    study = spec.studies[0]
    ctx = SweepContext(
        sweep="syn", study=study.key, experiment_id=experiment_id, parent_run_id="p", tracking_uri=uri,
        base=study.base.to_dict(), space=study.space, metric="val_dsc", mode="max", max_epochs=1, cpu=1, gpu=0,
        runs_dir=str(cache), space_hash="h", folds=2, cv_search="one-fold",
    )
    cfg = study.base.with_overrides({"data.fold": 1, "train.seed": 1})
    assert final_run(cfg.to_dict(), ctx, "syn/fold1/seed1", str(cache / "final"))["status"] == "FINISHED"
    client = MlflowClient(uri)
    (run,) = client.search_runs([experiment_id])
    assert (run.data.tags["vmbench.fold"], run.data.tags["vmbench.folds"]) == ("1", "2")
    assert _csv_ids(client, run.info.run_id, "eval/val/per_case.csv", cache / "dl") == sorted(splits["folds"][1]["val"])
    assert _csv_ids(client, run.info.run_id, "eval/per_case.csv", cache / "dl") == test_ids
    assert "best_val_dsc" in run.data.metrics and "test_dsc" in run.data.metrics
