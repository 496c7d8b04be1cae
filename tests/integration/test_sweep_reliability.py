"""The sweep's fault figures that need no cluster: data roots every node resolves alike, a node
without the data, the Optuna storage, metric steps logged once on retries, per-run peak memory."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from vmbench.errors import ConfigError, DataError
from vmbench.search_space import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]

SPACE = {
    "experiment": "t",
    "models": ["unet"],
    "dataset": "synthetic-isic",
    "budget": {"trials": 2, "max_epochs": 1},
    "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
}


# ------------------------------------------------------------------------------------ data roots


def test_a_shipped_file_resolves_data_root_against_the_checkout_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as `ray submit` runs the driver: in the home folder
    spec = load_spec(ROOT / "search_spaces" / "unet.yaml")
    assert spec.data_root == "data/isic2018"
    assert spec.studies[0].base.data.root == str(ROOT / "data" / "isic2018")
    assert f"relative to the vmbench checkout {ROOT} that holds the file" in spec.plan()


def test_a_file_outside_a_checkout_resolves_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    folder.mkdir()
    path = folder / "mine.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "data_root": "../datasets/isic"}))
    monkeypatch.chdir(ROOT)  # the working folder is never the anchor
    assert load_spec(path).studies[0].base.data.root == str(tmp_path / "datasets" / "isic")
    # The same rule for a root given among the fixed settings.
    path.write_text(yaml.safe_dump({**SPACE, "fixed": {"data": {"root": "isic"}}}))
    assert load_spec(path).studies[0].base.data.root == str(folder / "isic")


def test_a_file_inside_another_checkout_resolves_against_that_checkout(tmp_path):
    (tmp_path / "vmbench").mkdir()
    (tmp_path / "vmbench" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'vmbench'\n")
    path = tmp_path / "search_spaces" / "deep" / "x.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({**SPACE, "data_root": "data/isic2018"}))
    assert load_spec(path).studies[0].base.data.root == str(tmp_path / "data" / "isic2018")


def test_absolute_roots_and_urls_stay_as_written(tmp_path):
    for root in (str(tmp_path / "isic"), "s3://bucket/isic"):
        path = tmp_path / "x.yaml"
        path.write_text(yaml.safe_dump({**SPACE, "data_root": root}))
        spec = load_spec(path)
        assert spec.studies[0].base.data.root == root and "data_root" not in spec.plan()


def test_a_node_without_the_data_fails_in_one_line_naming_node_and_folder(tmp_path):
    import platform

    from vmbench.config import ExperimentConfig
    from vmbench.sweep import check_data_on_node

    missing = tmp_path / "not-mounted" / "isic2018"
    cfg = ExperimentConfig().with_overrides({"data.name": "isic2018", "data.root": str(missing)})
    with pytest.raises(DataError) as err:
        check_data_on_node(cfg)
    message = str(err.value)
    assert "\n" not in message and platform.node() in message and str(missing) in message
    check_data_on_node(ExperimentConfig())  # the dataset's own default folder: nothing to check here
    check_data_on_node(cfg.with_overrides({"data.root": str(tmp_path)}))  # present
    # A final run's transfer targets: their folders too, before it trains.
    present = cfg.with_overrides({"data.root": str(tmp_path)})
    target = {"name": "polyps-b", "root": str(tmp_path / "gone"), "options": {"format": "folder"}}
    with pytest.raises(DataError, match=r"has no data at .*gone \(transfer dataset polyps-b\)"):
        check_data_on_node(present, (target,))
    check_data_on_node(present, ({"name": "isic2017", "root": None, "options": {}},))  # its default folder


# ------------------------------------------------------------------------------------ Optuna storage

MOUNTS = r"""/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,relatime,vers=4.2 0 0
/dev/sdb1 /mnt/shared/local ext4 rw 0 0
//nas/lab\040data /mnt/lab\040data cifs rw 0 0
"""


def test_the_file_system_of_a_folder_is_its_longest_mount_point():
    from vmbench.sweep.storage import filesystem_type

    assert filesystem_type("/mnt/shared/sweeps/x", MOUNTS) == "nfs4"
    assert filesystem_type("/mnt/shared/local/x", MOUNTS) == "ext4"  # a local disk mounted below the share
    assert filesystem_type("/mnt/sharedness", MOUNTS) == "ext4"  # a prefix of the name is not a parent
    assert filesystem_type("/mnt/lab data/sweeps", MOUNTS) == "cifs"  # /proc/mounts escapes spaces
    assert filesystem_type("/home/me", "") == ""


def _searcher(storage, study_name="s"):
    import optuna

    from vmbench.search_space import optuna_distributions
    from vmbench.sweep.adapters import PruneAwareOptunaSearch

    return PruneAwareOptunaSearch(
        space=optuna_distributions(parse_spec(SPACE).space), metric="val_dsc", mode="max", max_epochs=2,
        sampler=optuna.samplers.TPESampler(seed=0), storage=storage, study_name=study_name,
    )


def test_a_sweep_folder_on_nfs_keeps_its_study_in_a_journal_that_survives_a_driver_restart(tmp_path, monkeypatch):
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from vmbench.sweep import storage as S

    monkeypatch.delenv(S.STORAGE_ENV, raising=False)
    monkeypatch.setattr(S, "filesystem_type", lambda path, mounts=None: "nfs4")
    store = S.optuna_storage(tmp_path)
    assert isinstance(store, optuna.storages.JournalStorage) and not (tmp_path / "optuna.db").exists()
    searcher = _searcher(store)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"val_dsc": 0.4, "epoch": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))  # what Tune snapshots; then the driver dies
    restored = _searcher(S.optuna_storage(tmp_path))
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("a", {"val_dsc": 0.6, "epoch": 2})
    restored.on_trial_complete("a", {"val_dsc": 0.6, "epoch": 2})
    # Read back by a process that shares nothing with the driver: the journal file alone.
    study = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(tmp_path / "optuna.journal"))))
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.6)
    assert trial.intermediate_values == {1: pytest.approx(0.4), 2: pytest.approx(0.6)}


def test_the_storage_a_sweep_started_with_is_kept_and_can_be_chosen(tmp_path, monkeypatch):
    import optuna

    from vmbench.sweep import storage as S

    monkeypatch.delenv(S.STORAGE_ENV, raising=False)
    monkeypatch.setattr(S, "filesystem_type", lambda path, mounts=None: "ext4")
    assert isinstance(S.optuna_storage(tmp_path), optuna.storages.RDBStorage)  # local disk: SQLite
    (tmp_path / "optuna.journal").write_text("")
    assert isinstance(S.optuna_storage(tmp_path), optuna.storages.JournalStorage)  # resumed as it started
    monkeypatch.setenv(S.STORAGE_ENV, "sqlite")
    assert isinstance(S.optuna_storage(tmp_path), optuna.storages.RDBStorage)
    monkeypatch.setenv(S.STORAGE_ENV, "redis")
    with pytest.raises(ConfigError, match=r"VMBENCH_OPTUNA_STORAGE='redis': expected sqlite, journal or a database URL"):
        S.optuna_storage(tmp_path)


def test_trials_never_load_optuna_so_only_the_driver_writes_the_study():
    code = ("import sys; from ray import tune; import vmbench.sweep.trainable, vmbench.sweep.folds, vmbench.engine, "
            "vmbench.engine.record, vmbench.data; print(sorted(m for m in sys.modules if m.split('.')[0] == 'optuna'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ MLflow steps


def test_a_retried_run_logs_each_step_once(tmp_path):
    """A retry resumes from an older checkpoint and runs epochs 3-4 again: they are not logged twice."""
    from mlflow import MlflowClient

    from vmbench import tracking as T

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment("steps")

    def attempt():
        return T.TrialRun(uri, experiment, "parent", key_tag=T.TAG_TRIAL_ID, key="t1", run_name="t1", tags={}, params={})

    first = attempt()
    for epoch in (1, 2, 3, 4):
        first.log_metrics({"val_dsc": 0.1 * epoch, "epoch_time_s": 1.0}, step=epoch)
    second = attempt()  # the driver was killed; Tune resumed the trial from its epoch-2 checkpoint
    assert second.run_id == first.run_id and second.resumed
    for epoch in (3, 4, 5):
        second.log_metrics({"val_dsc": 0.1 * epoch + 0.01, "epoch_time_s": 1.0}, step=epoch)
    second.log_metrics({"best_val_dsc": 0.5})
    second.log_metrics({"best_val_dsc": 0.5})  # a repeat within one attempt too
    client = MlflowClient(uri)
    history = client.get_metric_history(first.run_id, "val_dsc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert {m.step: m.value for m in history}[4] == pytest.approx(0.4)  # the first attempt's value stays
    assert len(client.get_metric_history(first.run_id, "best_val_dsc")) == 1


# ------------------------------------------------------------------------------------ peak memory


def test_a_runs_peak_memory_is_its_own_in_a_reused_process():
    """A worker that ran a big job before reports the peak of the current run only."""
    import numpy as np
    import torch

    from vmbench import profiling

    cpu = torch.device("cpu")
    big = 400 * 2**20

    def earlier_run():  # in a thread that ends, as Ray's and torch's helper threads do
        block = np.ones(big, dtype=np.uint8)
        block[:: 4096] = 2
        del block

    profiling.reset_peak_memory(cpu)
    thread = threading.Thread(target=earlier_run)
    thread.start()
    thread.join()
    earlier = profiling.peak_memory_mb(cpu)
    profiling.reset_peak_memory(cpu)  # the next run starts
    small = np.ones(16 * 2**20, dtype=np.uint8)
    current = profiling.peak_memory_mb(cpu)
    del small
    assert earlier - current > 300, (earlier, current)  # the earlier 400 MiB are not this run's
    assert current > 16  # and the run's own memory is counted


# ------------------------------------------------------------------------------------ a real sweep


@pytest.mark.slow  # a real sweep whose failing trials Ray retries twice each: minutes on 2 loaded cores
def test_trials_whose_node_lacks_the_data_fail_in_one_line_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """The data root the driver checked is missing for some trials (here: a searched root that no
    node has): those trials fail with the node and the folder in their run's error, the others finish."""
    import mlflow

    from vmbench.data.synthetic import synthetic_isic_root
    from vmbench.sweep import run_sweep

    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    present, missing = str(synthetic_isic_root(n=30)), str(tmp_path / "unmounted" / "isic")
    spec = parse_spec({
        **SPACE, "name": "nodes", "experiment": "nodes",
        "budget": {"trials": 4, "concurrent": 2, "max_epochs": 1},
        "resources": {"cpu": 1, "gpu": 0},
        "fixed": {"data": {"img_size": 32, "root": present}, "train": {"batch_size": 8},
                  "model": {"overrides": {"base_channels": 4}}},
        "space": {"data.root": {"type": "choice", "values": [present, missing]}},
        "final": {"seeds": [1]}, "sampler": {"name": "random", "seed": 1},
    }, source="nodes.yaml")
    runs_dir = tmp_path / "runs"
    (outcome,) = run_sweep(spec, runs_dir=runs_dir, num_cpus=2, num_gpus=0).studies
    mlflow.set_tracking_uri(f"sqlite:///{runs_dir / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=["nodes"])
    search = df[df["tags.vmbench.stage"] == "search"]
    lacking = search["params.data.root"] == missing
    assert lacking.any() and (~lacking).any(), "the seeded sampler should draw both roots"
    assert set(search.loc[lacking, "status"]) == {"FAILED"} and set(search.loc[~lacking, "status"]) == {"FINISHED"}
    for error in search.loc[lacking, "tags.vmbench.error"]:
        assert error.startswith("DataError: node ") and f"has no data at {missing}" in error and "\n" not in error
    assert outcome.best == {"data.root": present}
    assert set(df.loc[df["tags.vmbench.stage"] == "final", "status"]) == {"FINISHED"}
