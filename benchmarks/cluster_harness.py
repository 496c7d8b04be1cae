"""What the two launcher proofs share (``ray_up_local.py``, ``slurm_local.py``).

Every process a proof starts, directly or over SSH or through SLURM, inherits the environment
variable ``VMBENCH_RAYUP`` with a value unique to the run; that is how the proof finds, and
stops, exactly its own processes on a machine that other people's Ray clusters may share (never
by process name).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

MARK_ENV = "VMBENCH_RAYUP"


class Skip(Exception):
    """This machine cannot run the proof (a tool is missing or a service cannot start)."""


class StepFailed(Exception):
    def __init__(self, step: str, detail: str):
        super().__init__(f"{step}: {detail}")


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` (the kernel's pick on the first, checked on the rest)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind((hosts[0], 0))
            port = sock.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no TCP port free on all of {hosts}")


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def marked_pids(marker: str, settle: float = 0.0) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose environment holds ``VMBENCH_RAYUP=marker``.

    With ``settle`` > 0, waits up to that many seconds for them to end first (SSH control
    masters linger for Ray's ControlPersist of 10 s) and returns those still there.
    """
    wanted = f"{MARK_ENV}={marker}".encode()
    deadline = time.time() + settle
    while True:
        found, mine = [], _ancestors()
        for environ in Path("/proc").glob("[0-9]*/environ"):
            pid = int(environ.parent.name)
            try:
                if pid in mine or wanted not in environ.read_bytes().split(b"\0"):
                    continue
                if (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                cmd = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # ended meanwhile
                continue
            found.append((pid, cmd.strip()[:160]))
        if not found or time.time() >= deadline:
            return found
        time.sleep(1)


def stop_marked(marker: str, grace: float = 10.0) -> list[tuple[int, str]]:
    """SIGTERM, then SIGKILL after ``grace`` s, the marked processes; returns what was found."""
    found = marked_pids(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid, _ in found if _alive(pid)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while any(_alive(pid) for pid in alive) and time.time() < deadline:
            time.sleep(0.2)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listeners(marker: str) -> str:
    """Where the run's processes listen: "loopback: N; every interface: name:port, ..." (from ``ss``)."""
    marked = {pid for pid, _ in marked_pids(marker)}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    loopback, wide = 0, []
    for line in out.splitlines():
        fields = line.split()
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if len(fields) < 4 or not pids & marked:
            continue
        address = fields[3].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        if address.startswith("127.") or address == "::1":
            loopback += 1
        else:
            name = re.search(r'users:\(\("([^"]+)', line)
            wide.append(f"{name.group(1) if name else '?'}@{fields[3]}")
    return f"loopback: {loopback} sockets; other or all interfaces: {', '.join(sorted(wide)) or 'none'}"


def tiny_space(path: Path, models: list[str], experiment: str) -> Path:
    """A search space small enough for a shared 2-core machine: 64x64, 2 trials, 1 epoch, 1 seed."""
    space = {
        "experiment": experiment, "name": experiment, "models": models, "dataset": "synthetic-isic",
        "protocol": "holdout", "metric": "val_dsc", "mode": "max",
        "budget": {"trials": 2, "concurrent": 2, "max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "fixed": {"data": {"img_size": 64}, "train": {"batch_size": 16}},
        "space": {"optim.lr": {"type": "loguniform", "low": 3.0e-4, "high": 3.0e-3}},
        "final": {"seeds": [1]},
        "sampler": {"name": "tpe", "seed": 0},
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def check_final_runs(tracking_uri: str, experiment: str, models: list[str], seeds: int) -> str:
    """The sweep's finished final runs in MLflow, one per model and seed, each with test metrics."""
    from mlflow import MlflowClient

    from vmbench import tracking as T

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise StepFailed("MLflow check", f"no experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([found.experiment_id], max_results=1000)
    final = [r for r in runs if r.data.tags.get(T.TAG_STAGE) == T.STAGE_FINAL]
    trials = [r for r in runs if r.data.tags.get(T.TAG_STAGE) == T.STAGE_SEARCH]
    done = [r for r in final if r.info.status == "FINISHED" and any(k.startswith("test_") for k in r.data.metrics)]
    if sorted(r.data.tags.get(T.TAG_MODEL) for r in done) != sorted(models * seeds):
        states = [(r.data.tags.get(T.TAG_MODEL), r.info.status) for r in final]
        raise StepFailed("MLflow check", f"final runs {states}; expected {seeds} finished with test metrics per {models}")
    nodes = sorted({r.data.tags.get(T.TAG_RAY_NODE, "?")[:8] for r in trials + final})
    dsc = ", ".join(f"{r.data.tags.get(T.TAG_MODEL)} test_dsc {r.data.metrics.get('test_dsc', float('nan')):.3f}"
                    for r in done)
    return f"{len(done)} finished final runs ({dsc}), {len(trials)} trial runs, on Ray nodes {nodes}"


class Timer:
    """Runs the proof's steps, logs each one's output to a file, and keeps their wall times."""

    def __init__(self, log_dir: Path, env: dict[str, str], cwd: Path):
        self.log_dir, self.env, self.cwd, self.rows = log_dir, env, cwd, []
        log_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def step(self, name: str):
        print(f"-- {name}", flush=True)
        start = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self.rows.append((name, seconds))
            print(f"   {name}: {seconds:.1f} s", flush=True)

    def run(self, cmd: list[str], name: str, check: bool = True, quiet: bool = False, timeout: float = 3600) -> str:
        log = self.log_dir / (re.sub(r"\W+", "_", name).strip("_") + ".log")
        context = self.step(name) if not quiet else _nothing()
        with context:
            try:
                done = subprocess.run(cmd, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, timeout=timeout)
                output, code = done.stdout, done.returncode
            except subprocess.TimeoutExpired as err:
                output, code = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) \
                    else (err.stdout or ""), "timeout"
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(cmd)}\n{output}\n")
        if check and code != 0:
            tail = "\n".join(output.splitlines()[-40:])
            raise StepFailed(name, f"exit {code}; last lines (all in {log}):\n{tail}")
        return output

    def summary(self) -> str:
        return "; ".join(f"{name} {seconds:.1f} s" for name, seconds in self.rows)


@contextmanager
def _nothing():
    yield
