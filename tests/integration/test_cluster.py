"""Cluster files, and sweeps on a real multi-node Ray cluster on this machine (loopback only)."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["config.yaml", "local.yaml"])
def test_cluster_files_pass_rays_offline_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    # The same validation rejects a typo, so it is really checking.
    broken = copy.deepcopy(config)
    broken["setup_comands"] = broken.pop("setup_commands")
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(prepare_config(broken))


def test_aws_config_keeps_trials_off_the_head_and_mlflow_guarded():
    config = yaml.safe_load((ROOT / "cluster" / "config.yaml").read_text())
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in config["available_node_types"].values())
    server = " ".join(config["head_setup_commands"])
    assert "mlflow server" in server and "--allowed-hosts" in server
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:])


def _sweep_script():
    spec = importlib.util.spec_from_file_location("cluster_sweep", ROOT / "cluster" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_relative_space_resolves_from_another_working_directory(tmp_path, monkeypatch):
    script = _sweep_script()
    monkeypatch.chdir(tmp_path)  # as under `ray submit`: the home folder, not the checkout
    assert ROOT in script.repo_roots()
    assert script.resolve_repo_path("--space", "search_spaces/vmunet.yaml") == str(ROOT / "search_spaces" / "vmunet.yaml")
    # The working directory comes first.
    own = tmp_path / "search_spaces" / "vmunet.yaml"
    own.parent.mkdir()
    own.write_text("model: vmunet\n")
    assert script.resolve_repo_path("--space", "search_spaces/vmunet.yaml") == str(own)
    assert script.resolve_repo_path("--space", str(ROOT / "x.yaml")) == str(ROOT / "x.yaml")  # absolute: as given
    # Neither: one line naming both places.
    with pytest.raises(FileNotFoundError) as err:
        script.resolve_repo_path("--space", "search_spaces/nope.yaml")
    message = str(err.value)
    assert "\n" not in message and "--space search_spaces/nope.yaml" in message
    assert str(tmp_path / "search_spaces" / "nope.yaml") in message and str(ROOT / "search_spaces" / "nope.yaml") in message
    with pytest.raises(FileNotFoundError, match="no vmbench checkout"):
        script.resolve_repo_path("--space", "search_spaces/nope.yaml", roots=[])


def test_ray_submit_copy_of_the_script_finds_the_space_in_the_checkout(tmp_path):
    # `ray submit` copies cluster/sweep.py alone to ~/sweep.py on the head and runs it there.
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "cluster" / "sweep.py", home / "sweep.py")
    env = {**os.environ, "HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    base = [sys.executable, "sweep.py", "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    done = subprocess.run([*base, "--space", "search_spaces/quickstart.yaml"], cwd=home, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"from {ROOT / 'search_spaces' / 'quickstart.yaml'}" in done.stdout
    done = subprocess.run([*base, "--space", "search_spaces/nope.yaml"], cwd=home, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{home}/search_spaces/nope.yaml (working directory)" in done.stderr
    assert f"{ROOT}/search_spaces/nope.yaml (vmbench checkout)" in done.stderr


TINY = {
    "experiment": "cluster",
    "name": "cluster",
    "models": ["vmunet"],
    "dataset": "synthetic-isic",
    "budget": {"trials": 4, "concurrent": 2, "max_epochs": 3, "grace_period": 3, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0.5},
    "fixed": {
        "data": {"img_size": 32, "options": {"n": 60}},
        "train": {"batch_size": 8},
        "model": {"overrides": {"dims": [8, 16, 32, 64], "d_state": 4}},
    },
    "space": {"optim.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3}},
    "final": {"seeds": [1]},
    "sampler": {"name": "random", "seed": 0},
}


def search_runs(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["cluster"])


@pytest.fixture
def local_cluster(tmp_path, monkeypatch):
    from vmbench.data import build_dataset
    from localcluster import LocalCluster

    cache = tmp_path / "cache"
    monkeypatch.setenv("VMBENCH_CACHE", str(cache))
    build_dataset("synthetic-isic", split="train", img_size=32, n=60)  # generate once, before the nodes start
    with LocalCluster(workers=2, cpus_per_worker=1, gpus_per_worker=1, work_dir=tmp_path / "cluster",
                      env={"VMBENCH_CACHE": str(cache)}) as c:
        space = tmp_path / "cluster.yaml"
        space.write_text(yaml.safe_dump(TINY))
        yield c, space


@pytest.mark.slow  # about 2 minutes on an idle 2-core machine: starts a 3-node Ray cluster and an MLflow server
def test_job_submit_runs_trials_on_both_workers(local_cluster, tmp_path):
    cluster, space = local_cluster
    cluster.submit_sweep(space, "--no-leaderboard")
    # The driver ran from its own copy of the uploaded working directory, which Ray may delete
    # while the driver still imports from it (cluster/sweep.py).
    assert [p.name for p in (tmp_path / "cache" / "ray-jobs").iterdir()][0].startswith("_ray_pkg_")
    df = search_runs(cluster.tracking_uri)
    trials = df[df["tags.vmbench.stage"] == "search"]
    assert len(trials) == 4 and trials["tags.vmbench.trial_id"].is_unique
    assert trials["tags.vmbench.ray_node_id"].nunique() == 2  # placed on both worker nodes
    assert set(trials["tags.vmbench.gpu_ids"]) == {"0"}  # each worker's one (declared) GPU, shared 0.5 + 0.5
    assert set(df["status"]) == {"FINISHED"}
    assert len(df[df["tags.vmbench.stage"] == "final"]) == 1


@pytest.mark.slow
def test_lost_worker_trials_resume_on_the_other(local_cluster):
    import mlflow

    cluster, space = local_cluster
    from vmbench.data import build_dataset

    build_dataset("synthetic-isic", split="train", img_size=64, n=200)  # generated before the job starts
    spec = yaml.safe_load(space.read_text())
    # Trials long enough (tens of seconds) to be caught running on both workers.
    spec["budget"].update(trials=3, max_epochs=6, grace_period=6)
    spec["fixed"]["data"] = {"img_size": 64, "options": {"n": 200}}
    space.write_text(yaml.safe_dump(spec))
    job = cluster.submit_sweep(space, "--no-leaderboard", wait=False)
    client = mlflow.MlflowClient(cluster.tracking_uri)
    victim = cluster.nodes[0]
    deadline = time.time() + 300
    killed = None
    while time.time() < deadline and killed is None:
        time.sleep(0.5)
        experiment = client.get_experiment_by_name("cluster")
        if experiment is None:
            continue
        running = client.search_runs(
            [experiment.experiment_id],
            "tags.`vmbench.stage` = 'search' and attributes.status = 'RUNNING'",
        )
        # Kill once both workers hold a trial that has checkpointed at least one epoch.
        progressed = [r for r in running if "train_loss" in r.data.metrics]
        if len({r.data.tags.get("vmbench.ray_node_id") for r in progressed}) >= 2:
            killed = cluster.kill_worker(victim)
    assert killed, "no moment with trials running on both workers"
    assert cluster.wait_job(job, timeout=900) == "SUCCEEDED"
    df = search_runs(cluster.tracking_uri)
    trials = df[df["tags.vmbench.stage"] == "search"]
    assert len(trials) == 3 and trials["tags.vmbench.trial_id"].is_unique  # each trial exactly once
    assert "RUNNING" not in set(df["status"])
    retried = trials[trials["tags.vmbench.attempts"].astype(int) >= 2]
    assert len(retried) >= 1
    # Retried from its latest checkpoint on the surviving worker, not from scratch.
    assert (retried["tags.vmbench.resumed_from_epoch"].astype(int) >= 1).all()
    assert set(retried["status"]) == {"FINISHED"}
    assert len(df[(df["tags.vmbench.stage"] == "final") & (df["status"] == "FINISHED")]) == 1
    # The retry ran again the epochs after its checkpoint that the lost attempt had logged: once each.
    for run_id in retried["run_id"]:
        for key in client.get_run(run_id).data.metrics:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert len(steps) == len(set(steps)), (key, sorted(steps))
