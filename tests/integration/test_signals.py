"""SIGINT and SIGTERM stop ``vmbench train`` and ``vmbench sweep`` promptly (issue 23, class 3).

Each case runs the real command in a subprocess on a tiny model, sends the signal at a point of
its work and checks: exit status 130 (SIGINT) or 143 (SIGTERM), one line on standard error, no
traceback, no MLflow run left RUNNING (the command's runs are KILLED), and what ``--resume`` needs
(``last.pt``; Ray Tune's experiment state) still there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TRAIN = ["train", "--model", "unet", "--dataset", "synthetic-isic", "--img-size", "32", "--epochs", "200",
         "--batch-size", "4", "--no-progress", "--set", "model.overrides.base_channels=4"]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def start(argv: list[str], cwd: Path, uri: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vmbench", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never reached the point to signal"
        time.sleep(0.2)


def statuses(uri: str) -> dict[str, int]:
    path = uri[len("sqlite:///"):]
    if not Path(path).exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    finally:
        con.close()


def stopped(proc: subprocess.Popen, signum: int, timeout: float = 60) -> str:
    t0 = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    assert time.monotonic() - t0 < timeout
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line and "WARNING" not in line]
    assert proc.returncode == EXIT[signum], err
    assert "Traceback" not in err, err
    assert lines and lines[-1] == f"vmbench: stopped by {signum.name}", err
    return err


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_during_training_kills_the_run_and_keeps_last_pt(tmp_path, signum):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    proc = start(TRAIN + ["--out", str(run)], tmp_path, uri)
    wait_for(lambda: (run / "checkpoints" / "last.pt").exists(), proc, 240)  # an epoch is done
    stopped(proc, signum)
    assert statuses(uri) == {"KILLED": 1}
    assert (run / "checkpoints" / "last.pt").is_file()
    # The lock went with the process: --resume may continue at once (checked here up to its message).
    proc = start(TRAIN + ["--out", str(run), "--resume"], tmp_path, uri)
    wait_for(lambda: "resuming" in (proc.stdout.readline() or ""), proc, 120)
    stopped(proc, signal.SIGTERM)
    assert statuses(uri).get("RUNNING", 0) == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_starting_leaves_nothing_running(tmp_path, signum):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start(TRAIN + ["--out", str(tmp_path / "run")], tmp_path, uri)
    time.sleep(3)  # importing torch and MLflow, building the data: before any run exists
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT[signum], err
    assert "Traceback" not in err, err
    assert statuses(uri).get("RUNNING", 0) == 0


SPACE = {"experiment": "signals", "name": "signals", "models": ["unet"], "dataset": "synthetic-isic",
         "budget": {"trials": 2, "concurrent": 1, "max_epochs": 40, "grace_period": 40},
         "resources": {"cpu": 1, "gpu": 0},
         "fixed": {"data": {"img_size": 32}, "model": {"overrides": {"base_channels": 4}}},
         "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}, "final": {"seeds": [1]}}


@pytest.mark.slow  # about a minute: starts Ray
@pytest.mark.parametrize("stage,signum", [("search", signal.SIGINT), ("final", signal.SIGTERM)],
                         ids=["search-SIGINT", "final-SIGTERM"])
def test_signal_during_a_sweep_kills_its_runs(tmp_path, stage, signum):
    space = yaml.safe_load(yaml.safe_dump(SPACE))
    if stage == "final":  # a one-epoch search, then a long final run
        space["budget"].update(trials=1, max_epochs=1, grace_period=1)
        space["final"]["epochs"] = 200
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    proc = start(["sweep", "--space", "space.yaml", "--runs-dir", "runs", "--num-cpus", "2"], tmp_path, uri)
    final = tmp_path / "runs" / "sweeps" / "signals" / "final"
    trials = tmp_path / "runs" / "ray" / "signals__synthetic-isic__unet"
    if stage == "search":
        wait_for(lambda: any(trials.glob("search_trial_*/checkpoint_*")), proc, 300)
    else:
        wait_for(lambda: any(final.rglob("last.pt")), proc, 300)
    stopped(proc, signum)
    counts = statuses(uri)
    assert counts.get("RUNNING", 0) == 0 and counts.get("KILLED", 0) >= 2, counts  # the parent and a child
    assert any(trials.glob("experiment_state*.json"))  # what --resume restores
