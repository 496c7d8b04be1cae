"""A multi-node Ray cluster and an MLflow server on one machine, as real processes.

For trying the cluster path without a cloud account, for the multi-node tests (tests/conftest.py
puts this folder on ``sys.path``) and for the scaling benchmark: ``ray start --head`` plus N
``ray start --address`` worker nodes (each with its own raylet, so one can be killed to simulate
a lost node), token authentication as Ray 2.60 requires, and ``mlflow server`` on loopback.
Everything binds to 127.0.0.1.

    with LocalCluster(workers=2, gpus_per_worker=1) as cluster:
        cluster.submit_sweep("search_spaces/quickstart.yaml")

Ray's processes are stopped by their process groups on exit; nothing else on the machine is
touched (no ``ray stop``). From the checkout: ``python benchmarks/localcluster.py --workers 2
--space search_spaces/quickstart.yaml``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from vmbench.io import atomic_write

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class WorkerNode:
    index: int
    node_manager_port: int
    process: subprocess.Popen | None = None

    def raylet_pids(self) -> list[int]:
        """The raylet of this node (found by its unique node-manager port)."""
        out = subprocess.run(["pgrep", "-f", f"raylet.*--node_manager_port={self.node_manager_port}"],
                             capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


@dataclass
class LocalCluster:
    workers: int = 2
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0
    work_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.work_dir = Path(self.work_dir or tempfile.mkdtemp(prefix="vmbench-cluster-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        self.mlflow_port = _free_port()
        self.nodes: list[WorkerNode] = []
        self._sessions: list[int] = []
        self.mlflow: subprocess.Popen | None = None
        token = secrets.token_hex(32)
        atomic_write(self.work_dir / "auth_token", token, mode=0o600)  # a credential: owner only
        self.base_env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_DEDUP_LOGS": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            **self.env,
        }

    # -- processes -----------------------------------------------------------------------------

    def _ray(self, *args: str) -> None:
        # Each `ray start` runs in a new session; the daemons it leaves behind keep that session
        # id, which is how stop() finds exactly this cluster's processes.
        process = subprocess.Popen([_bin("ray"), *args], env=self.base_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._sessions.append(process.pid)
        output, _ = process.communicate(timeout=180)
        if process.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {output[-2000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def start(self) -> "LocalCluster":
        # Ray's unix sockets live under --temp-dir, and AF_UNIX paths are limited to 107 bytes:
        # keep it short rather than inside a deep work folder.
        temp = Path(tempfile.mkdtemp(prefix="vmr", dir="/tmp"))
        # The head runs drivers only (no CPU, no GPU): trials must land on worker nodes.
        self._ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}", "--num-cpus=0",
                  "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={self.dashboard_port}", f"--temp-dir={temp}", "--disable-usage-stats")
        for i in range(self.workers):
            self.add_worker()
        self._start_mlflow()
        self._wait_dashboard()
        return self

    def add_worker(self) -> WorkerNode:
        node = WorkerNode(len(self.nodes), _free_port())
        self._ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                  f"--num-cpus={self.cpus_per_worker}", f"--num-gpus={self.gpus_per_worker}",
                  f"--node-manager-port={node.node_manager_port}", "--disable-usage-stats")
        self.nodes.append(node)
        return node

    def kill_worker(self, node: WorkerNode) -> list[int]:
        """SIGKILL the node's raylet: its worker processes die with it, as on a lost machine."""
        pids = node.raylet_pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return pids

    def _start_mlflow(self) -> None:
        store = self.work_dir / "mlflow"
        store.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
               "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1"]
        with open(self.work_dir / "mlflow.log", "w") as log:  # the server keeps its own copy of the descriptor
            self.mlflow = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.base_env,
                                           start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2):
                    return
            except OSError:
                if self.mlflow.poll() is not None:
                    raise RuntimeError(f"mlflow server exited; see {self.work_dir / 'mlflow.log'}") from None
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start within 120 s")

    def _wait_dashboard(self) -> None:
        # With token authentication the dashboard answers 401 without the bearer token.
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/version", headers={"Authorization": f"Bearer {self.base_env['RAY_AUTH_TOKEN']}"}
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the Ray dashboard (job API) did not answer within 120 s")

    def stop(self) -> None:
        if self.mlflow is not None and self.mlflow.poll() is None:
            os.killpg(self.mlflow.pid, signal.SIGTERM)
            try:
                self.mlflow.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.mlflow.pid, signal.SIGKILL)
        for pid in self._cluster_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _cluster_pids(self) -> list[int]:
        """Processes in the sessions of this cluster's `ray start` calls (and the jobs they ran)."""
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
        sessions = set(self._sessions)
        return [int(pid) for pid, sid in (line.split() for line in out.splitlines()) if int(sid) in sessions]

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- jobs ----------------------------------------------------------------------------------

    def submit_sweep(self, space: str | Path, *extra: str, wait: bool = True, env: dict[str, str] | None = None) -> str:
        """``ray job submit`` of ``cluster/sweep.py``; returns the job id (waits unless told not to)."""
        runtime_env = {
            "working_dir": str(REPO),
            "excludes": [".venv", ".git", "vmbench-runs", "**/__pycache__", "*.egg-info"],
            "env_vars": {"MLFLOW_TRACKING_URI": self.tracking_uri, **(env or {})},
        }
        job_id = f"vmbench-{secrets.token_hex(4)}"
        cmd = [_bin("ray"), "job", "submit", f"--address={self.dashboard_url}", f"--submission-id={job_id}",
               f"--runtime-env-json={json.dumps(runtime_env)}"]
        if not wait:
            cmd.append("--no-wait")
        cmd += ["--", sys.executable, "cluster/sweep.py", "--space", str(space),
                "--storage-path", str(self.work_dir / "storage"), "--runs-dir", str(self.work_dir / "runs"), *extra]
        deadline = time.time() + 600  # a busy machine brings the job agent up slowly
        while True:
            result = subprocess.run(cmd, env=self.base_env, capture_output=True, text=True, timeout=1800)
            # The job agent of a fresh head comes up a little after the dashboard answers.
            if "No available agent" not in result.stdout + result.stderr or time.time() > deadline:
                break
            time.sleep(3)
        atomic_write(self.work_dir / f"{job_id}.log", result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"job {job_id} failed (exit {result.returncode}): {(result.stdout + result.stderr)[-3000:]}")
        return job_id

    def job_status(self, job_id: str) -> str:
        result = subprocess.run([_bin("ray"), "job", "status", f"--address={self.dashboard_url}", job_id],
                                env=self.base_env, capture_output=True, text=True, timeout=60)
        # The CLI says e.g. "Job 'x' succeeded" / "failed" / "was stopped" / "is currently running".
        out = (result.stdout + result.stderr).lower()
        for word, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("stopped", "STOPPED"),
                             ("running", "RUNNING"), ("pending", "PENDING")):
            if f"' {word}" in out or f"' was {word}" in out or f"currently {word}" in out:
                return status
        return "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float = 1800) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.job_status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(2)
        raise TimeoutError(f"job {job_id} still running after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/localcluster.py [--workers 2] [--gpus-per-worker 1] [--space FILE]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python benchmarks/localcluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="declared (fake) GPUs per worker node")
    parser.add_argument("--space", help="submit this sweep with `ray job submit`, then stop the cluster")
    args = parser.parse_args(argv)
    with LocalCluster(args.workers, args.cpus_per_worker, args.gpus_per_worker) as cluster:
        print(f"Ray {cluster.address} (jobs: {cluster.dashboard_url}), MLflow {cluster.tracking_uri}, "
              f"token in {cluster.work_dir / 'auth_token'}", flush=True)
        if args.space:
            job = cluster.submit_sweep(args.space)
            print(f"job {job} finished; its log: {cluster.work_dir / (job + '.log')}")
            return 0
        print("Ctrl-C stops the cluster", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
