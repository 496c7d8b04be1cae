"""cluster/slurm.sbatch on a real SLURM cluster on this machine: sbatch -> sweep -> MLflow, then scancel.

    python benchmarks/slurm_local.py [--keep] [--models unet]      (as root; Debian: slurm-wlm munge)

Sets up, in a temporary state folder, a munge daemon with a key made for the run and a SLURM
controller plus two compute-node daemons (``slurmd -N``), nodes ``vmbn1`` at 127.0.0.2 and
``vmbn2`` at 127.0.0.3 with one CPU each, all on ports picked free and with configuration files
of their own (the system's /etc/slurm and /etc/munge are not read). Then, with the wall time of
each step:

1. ``sbatch --wait --nodes=2 cluster/slurm.sbatch SPACE`` with a tiny search space: the job
   starts the Ray head and the MLflow server on vmbn1, a Ray worker on vmbn2, runs the sweep
   and stops everything; the finished final runs are then read from the job's MLflow store;
2. a second job, cancelled with ``scancel`` once its sweep has started: every process of that job
   must be gone soon after.

Every process of the run inherits ``VMBENCH_RAYUP``; on exit, success, failure or a signal, the
processes holding the run's value are stopped and the folder removed (``--keep`` keeps it).

Exit status: 0 passed, 1 failed, 77 skipped (not root, no SLURM or munge, or they do not start).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_harness import (  # noqa: E402  (this folder's helper, next to this script)
    MARK_ENV, Skip, StepFailed, Timer, check_final_runs, free_port, marked_pids, stop_marked, tiny_space,
)

REPO = Path(__file__).resolve().parents[1]
NODES = {"vmbn1": "127.0.0.2", "vmbn2": "127.0.0.3"}
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "squeue", "sinfo", "scontrol", "srun")


def slurm_conf(tmp: Path, ports: dict[str, int]) -> str:
    host = socket.gethostname().split(".")[0]  # slurmctld only runs where SlurmctldHost names this host
    lines = [
        "ClusterName=vmbench-test", f"SlurmctldHost={host}(127.0.0.2)", f"SlurmctldPort={ports['ctld']}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={tmp / 'munge' / 'socket'}",
        "SlurmUser=root", "SlurmdUser=root", f"StateSaveLocation={tmp / 'state'}", f"SlurmdSpoolDir={tmp / 'spool'}/%n",
        f"SlurmctldPidFile={tmp / 'slurmctld.pid'}", f"SlurmdPidFile={tmp / 'slurmd'}.%n.pid",
        f"SlurmctldLogFile={tmp / 'slurmctld.log'}", f"SlurmdLogFile={tmp / 'slurmd'}.%n.log",
        # No cgroups here: processes are tracked by parentage, tasks are not bound to CPUs.
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "ReturnToService=2",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "KillWait=20",
    ]
    lines += [f"NodeName={name} NodeHostname={host} NodeAddr={addr} Port={ports[name]} CPUs=1 State=UNKNOWN"
              for name, addr in NODES.items()]
    lines.append(f"PartitionName=vmbench Nodes={','.join(NODES)} Default=YES MaxTime=120 State=UP")
    return "\n".join(lines) + "\n"


def start_slurm(tmp: Path, env: dict[str, str], daemons: list[subprocess.Popen]) -> None:
    """munged, slurmctld and one slurmd per node, in the foreground of their own sessions (added to
    ``daemons`` as they start, so that the caller stops them whatever happens)."""
    (tmp / "munge").mkdir(mode=0o755)  # munged wants its socket folder reachable by everyone
    (tmp / "munge-key").mkdir(mode=0o700)
    key = tmp / "munge-key" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    for folder in ("state", "spool"):
        (tmp / folder).mkdir()
    ports = {name: free_port("0.0.0.0") for name in ("ctld", *NODES)}  # the daemons listen on every interface
    (tmp / "slurm.conf").write_text(slurm_conf(tmp, ports))
    conf = str(tmp / "slurm.conf")
    commands = [
        ["munged", "-F", f"--key-file={key}", f"--socket={tmp / 'munge' / 'socket'}", f"--pid-file={tmp / 'munge-key' / 'pid'}",
         f"--log-file={tmp / 'munge-key' / 'log'}", f"--seed-file={tmp / 'munge-key' / 'seed'}"],
        ["slurmctld", "-D", "-f", conf],
        *(["slurmd", "-D", "-N", name, "-f", conf] for name in NODES),
    ]
    for cmd in commands:
        out = open(tmp / f"{cmd[0]}-{len(daemons)}.out", "w")
        daemons.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(1 if cmd[0] == "munged" else 0)
    deadline = time.time() + 90
    while True:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True).stdout.split()
        if states.count("idle") == len(NODES):
            return
        dead = [p.args[0] for p in daemons if p.poll() is not None]
        if dead or time.time() > deadline:
            logs = "".join((tmp / name).read_text()[-400:] for name in sorted(os.listdir(tmp)) if name.endswith(".out"))
            raise Skip(f"SLURM did not start ({', '.join(dead) or 'nodes not idle'}: {states}): {logs.strip()[-600:]}")
        time.sleep(1)


def job_processes(marker: str, job_id: str) -> list[tuple[int, str]]:
    want = f"SLURM_JOB_ID={job_id}".encode()
    return [(pid, cmd) for pid, cmd in marked_pids(marker) if _environ_has(pid, want)]


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def sbatch(timer: Timer, tmp: Path, space: Path, wait: bool) -> str:
    cmd = ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--time=60", f"--output={tmp / 'job-%j.out'}",
           *(["--wait"] if wait else []), str(REPO / "cluster" / "slurm.sbatch"), str(space)]
    name = "sbatch --wait (sweep)" if wait else "sbatch"
    try:
        out = timer.run(cmd, name, quiet=not wait)
    except StepFailed:
        outputs = sorted(tmp.glob("job-*.out"))
        if outputs:
            print(f"   job output ({outputs[-1]}):\n" + "\n".join(outputs[-1].read_text().splitlines()[-40:]), flush=True)
        raise
    return out.strip().splitlines()[0].split(";")[0]


def cancel_test(timer: Timer, tmp: Path, space: Path, marker: str) -> None:
    """A job cancelled mid-sweep leaves no process behind."""
    job = sbatch(timer, tmp, space, wait=False)
    output = tmp / f"job-{job}.out"
    with timer.step(f"job {job}: until its sweep runs"):
        deadline = time.time() + 900
        while not (output.exists() and "sweep: " in output.read_text()):
            if time.time() > deadline:
                raise StepFailed("scancel test", f"job {job} did not reach its sweep within 900 s")
            time.sleep(2)
        time.sleep(15)  # trials under way
    running = job_processes(marker, job)
    with timer.step(f"scancel {job} -> no process of it left"):
        timer.run(["scancel", job], "scancel", quiet=True)
        deadline = time.time() + 120
        while (left := job_processes(marker, job)) and time.time() < deadline:
            time.sleep(1)
    if left:
        raise StepFailed("scancel", f"{len(left)} of job {job}'s processes still run: " + "; ".join(c for _, c in left))
    text = output.read_text()
    if "stopping the sweep" not in text:
        raise StepFailed("scancel", f"job {job} never ran its cleanup trap; its output ends: {text[-800:]}")
    print(f"   job {job} had {len(running)} processes when cancelled; none left, its trap ran", flush=True)


def run(args, tmp: Path, marker: str, daemons: list[subprocess.Popen]) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise Skip(f"missing {', '.join(missing)}: apt-get install -y slurm-wlm munge")
    home = tmp / "home"
    home.mkdir()
    # VMBENCH_PYTHON: the job runs this Python (the one running the proof, or the tests), not
    # slurm.sbatch's default .venv/bin/python of the submit folder, which may not exist or lack vmbench.
    env = {**os.environ, MARK_ENV: marker, "SLURM_CONF": str(tmp / "slurm.conf"), "HOME": str(home),
           "VMBENCH_RUNS_DIR": str(tmp / "runs"), "VMBENCH_PYTHON": sys.executable, "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("SLURM_JOB_ID", "SLURM_JOBID", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):  # from an outer job or shell
        env.pop(name, None)
    timer = Timer(tmp / "logs", env, REPO)
    with timer.step("munged + slurmctld + 2 slurmd up"):
        start_slurm(tmp, env, daemons)
    space = tiny_space(tmp / "space.yaml", args.models, "vmbench-slurm")
    job = sbatch(timer, tmp, space, wait=True)
    print("   " + "\n   ".join(line for line in (tmp / f"job-{job}.out").read_text().splitlines()
                               if line.startswith("[")), flush=True)
    with timer.step("MLflow check"):
        print("   " + check_final_runs(f"sqlite:///{tmp / 'runs' / 'mlflow.db'}", "vmbench-slurm", args.models, 1),
              flush=True)
    left = job_processes(marker, job)
    if left:
        raise StepFailed(f"after job {job}", "still running: " + "; ".join(c for _, c in left))
    if not args.no_cancel:
        cancel_test(timer, tmp, space, marker)
    print(f"slurm sbatch -> sweep -> scancel passed; {timer.summary()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["unet"], help="models of the tiny sweep (default unet)")
    parser.add_argument("--no-cancel", action="store_true", help="skip the scancel test")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("SKIP: needs root (slurmd runs jobs as their user)", file=sys.stderr)
        return 77
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    tmp = Path(tempfile.mkdtemp(prefix="vmbsl", dir="/tmp"))
    tmp.chmod(0o711)
    marker, daemons = f"{tmp.name}-{secrets.token_hex(4)}", []
    try:
        run(args, tmp, marker, daemons)
        return 0
    except Skip as skip:
        print(f"SKIP: {skip}", file=sys.stderr, flush=True)
        return 77
    except StepFailed as failed:
        print(f"FAILED: {failed}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop_marked(marker)
        for daemon in daemons:  # by process group too, in case a daemon rewrote its environment
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                try:
                    daemon.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)
        if args.keep:
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
