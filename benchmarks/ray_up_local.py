"""Ray's cluster launcher end to end on this machine: `ray up` -> `ray submit` -> MLflow -> `ray down`.

    python benchmarks/ray_up_local.py [--keep] [--models unet]      (as root)

What it does, with the wall time of every step:

1. makes a temporary user for the cluster (``useradd``; its home inside the run's temporary
   folder) and starts a private OpenSSH server (``/usr/sbin/sshd -f <its own config>``) on a free
   port of 127.0.0.2 and 127.0.0.3 that lets only that user in, with a key generated for this run.
   The "head" is 127.0.0.2, the "worker" 127.0.0.3, both this machine. The system's sshd
   configuration and root's files are left alone;
2. writes a concrete launcher file from ``cluster/local.yaml`` (the lab template): these
   addresses, free ports, the run's key, and a node venv that borrows this machine's installed
   packages and installs the mounted checkout editable (the template installs them with pip);
3. ``ray up`` (head: file mounts, setup, MLflow server, ``ray start --head``), waits until the
   head's autoscaler has set up the worker over SSH, ``ray submit ... cluster/sweep.py`` with a
   tiny search space, checks the finished final runs in the head's MLflow server, stops that
   server (``ray exec ... kill``) and runs ``ray down``.

A user of its own is what the template asks of a lab too: ``ray stop`` (which ``ray up`` and
``ray down`` run) stops every Ray process of the SSH user on the machine, and this machine may
run other people's Ray clusters. Every process of the run also inherits the environment
variable ``VMBENCH_RAYUP``; on exit, success or failure or a signal, whatever still holds it is
stopped, sshd included, the user is removed and the temporary folder deleted (``--keep`` keeps
it).

Exit status: 0 passed, 1 failed, 77 skipped (not root, or no sshd, ssh, rsync or Python here).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_harness import (  # noqa: E402  (this folder's helper, next to this script)
    MARK_ENV, Skip, StepFailed, Timer, check_final_runs, free_port, listeners, marked_pids, stop_marked, tiny_space,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "cluster" / "local.yaml"
# Not 127.0.0.1: Ray replaces that address by the machine's own interface address (its
# resolve_ip_for_localhost), so the nodes would neither match the launcher's IPs nor stay on loopback.
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
SSHD = "/usr/sbin/sshd"

# A ProxyCommand for the launcher's ssh: Ray's launcher has no option for the SSH port (the head's
# autoscaler reads the port from the cluster user's ~/.ssh/config instead).
RELAY = '''import os, selectors, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ)
sel.register(sock, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == 0:
            data = os.read(0, 65536)
            if not data:
                sock.shutdown(socket.SHUT_WR)
                sel.unregister(0)
                continue
            sock.sendall(data)
        else:
            data = sock.recv(65536)
            if not data:
                sys.exit(0)
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
'''

# The node venv: this machine's packages (a .pth line), the mounted checkout installed editable,
# and `ray` / `mlflow` launchers that run under the venv's python (so Ray's workers do too).
NODE_SETUP = '''set -e
venv="$HOME/vmbench-venv"
{python} -m venv --without-pip "$venv"
echo {site} > "$venv/lib/python{pyver}/site-packages/machine-packages.pth"
cd "$HOME"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$HOME/vmbench-src"
for tool in ray=ray.scripts.scripts:main mlflow=mlflow.cli:cli; do
  name=${{tool%%=*}}; target=${{tool#*=}}
  printf '#!%s\\nimport sys\\nfrom %s import %s as main\\nsys.exit(main())\\n' \\
    "$venv/bin/python" "${{target%%:*}}" "${{target#*:}}" > "$venv/bin/$name"
  chmod +x "$venv/bin/$name"
done
'''


def sshd_config(tmp: Path, port: int, user: str, env: dict[str, str]) -> str:
    return "\n".join([
        f"Port {port}", f"ListenAddress {HEAD}", f"ListenAddress {WORKER}", f"AllowUsers {user}",
        f"HostKey {tmp / 'keys' / 'host_key'}", f"PidFile {tmp / 'keys' / 'sshd.pid'}",
        f"AuthorizedKeysFile {tmp / 'pub' / 'authorized_keys'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no",
        "StrictModes no",  # the key files live under /tmp, which is world-writable (sticky)
        "MaxStartups 50", "SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()), "",
    ])


def make_user(tmp: Path, user: str) -> Path:
    home = tmp / "home"
    # Password "*": none can match, but the account is not locked (sshd refuses locked ones for keys too).
    done = subprocess.run(["useradd", "-M", "-N", "-g", "nogroup", "-p", "*", "-d", str(home), "-s", "/bin/bash", user],
                          capture_output=True, text=True)
    if done.returncode:
        raise Skip(f"useradd {user} failed: {done.stderr.strip()}")
    for folder in (home, home / ".ssh", tmp / "n", tmp / "shared"):
        folder.mkdir()
        shutil.chown(folder, user, "nogroup")
    (home / ".bashrc").touch()
    shutil.chown(home / ".bashrc", user, "nogroup")
    return home


def start_sshd(tmp: Path, user: str, node_env: dict[str, str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    keys = tmp / "keys"
    for name in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "id.pub", tmp / "pub" / "authorized_keys")
    port = free_port(HEAD, WORKER)
    config = tmp / "keys" / "sshd_config"
    config.write_text(sshd_config(tmp, port, user, node_env))
    checked = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if checked.returncode:
        raise Skip(f"sshd rejects its configuration: {checked.stderr.strip()}")
    log = tmp / "keys" / "sshd.log"
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config), "-E", str(log)], env=env, start_new_session=True)
    ssh = ["ssh", "-i", str(keys / "id"), "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5"]
    deadline = time.time() + 60
    try:
        for host in (HEAD, WORKER):
            while subprocess.run([*ssh, f"{user}@{host}", "true"], env=env, capture_output=True).returncode:
                if sshd.poll() is not None or time.time() > deadline:
                    text = log.read_text() if log.exists() else ""
                    raise Skip(f"sshd did not accept the run's key on {host}:{port}: {text.strip()[-300:]}")
                time.sleep(0.5)
    except BaseException:
        # sshd rewrites its own environment (its process title), so the marker cannot find it.
        _stop_group(sshd)
        raise
    return sshd, port


class Substitutions:
    """Replace template values in every command; each one must be found (else the template drifted)."""

    def __init__(self, pairs: dict[str, str]):
        self.pairs, self.used = pairs, set()

    def __call__(self, text: str) -> str:
        for old, new in self.pairs.items():
            if old in text:
                text, _ = text.replace(old, new), self.used.add(old)
        return text

    def check(self) -> None:
        missing = [old for old in self.pairs if old not in self.used]
        if missing:
            raise SystemExit(f"{TEMPLATE}: no longer contains {missing}; update benchmarks/ray_up_local.py")


def concrete_config(template: dict, tmp: Path, ports: dict[str, int], ssh_port: int, user: str = "vmbench") -> dict:
    """The lab template with this machine's values (see the module docstring)."""
    config = copy.deepcopy(template)
    config["cluster_name"] = f"vmbench-rayup-{tmp.name[-6:].lower()}"
    config["provider"].update(head_ip=HEAD, worker_ips=[WORKER])
    config["auth"] = {"ssh_user": user, "ssh_private_key": str(tmp / "keys" / "id"),
                      "ssh_proxy_command": f"{sys.executable} -I {tmp / 'pub' / 'relay.py'} %h {ssh_port}"}
    mounts = config["file_mounts"]
    assert set(mounts) == {"/opt/vmbench", "~/.ray/auth_token"}, mounts
    # Not ~/vmbench: `ray submit` runs ~/sweep.py, and a ~/vmbench folder would shadow the package.
    config["file_mounts"] = {"~/vmbench-src": str(REPO), "~/.ray/auth_token": str(tmp / "keys" / "auth_token")}
    head_ip = template["provider"]["head_ip"]
    sub = Substitutions({  # in this order: the longer values first
        f"{head_ip}:5000": f"{HEAD}:{ports['mlflow']}", head_ip: HEAD, "/shared/": f"{tmp / 'shared'}/",
        "--port 5000": f"--port {ports['mlflow']}", "--port=6379": f"--port={ports['gcs']}",
        # Free ports for what listens on a fixed default port (other Ray clusters may hold those here;
        # a worker whose dashboard agent cannot bind 52365 has its raylet abort).
        "$RAY_HEAD_IP:6379": f"$RAY_HEAD_IP:{ports['gcs']} --dashboard-agent-listen-port={ports['worker_agent']}",
        "--dashboard-host=127.0.0.1": f"--dashboard-host=127.0.0.1 --dashboard-port={ports['dashboard']} "
                                      f"--ray-client-server-port={ports['client']} "
                                      f"--dashboard-agent-listen-port={ports['head_agent']}",
    })
    # The template's first setup command creates the venv with pip (downloads); here it is NODE_SETUP.
    assert "pip install" in template["setup_commands"][0], template["setup_commands"][0]
    config["setup_commands"] = [f"bash {tmp / 'pub' / 'node_setup.sh'}", *map(sub, template["setup_commands"][1:])]
    config["head_setup_commands"] = [sub(c) for c in template["head_setup_commands"]]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        # Head and worker are one machine and one user here: the worker's `ray stop` would stop the
        # head. (`ray down` still runs `ray stop` on the head, which stops both.)
        config[key] = [sub(c) for c in template[key] if not c.rstrip().endswith("ray stop")]
    sub.check()
    return config


def node_python() -> str:
    """A Python of this machine's minor version that the cluster user may run (the venv's may sit in /root)."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{name}", f"/usr/local/bin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise Skip(f"no /usr/bin/{name} for the cluster user (this machine's packages are built for {name})")


def write_files(tmp: Path, home: Path, user: str, ssh_port: int, ports: dict[str, int]) -> Path:
    """The node setup script, the relay, the token, the cluster user's SSH port, and the launcher file."""
    pub = tmp / "pub"
    site = sysconfig.get_paths()["purelib"]
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    (pub / "node_setup.sh").write_text(NODE_SETUP.format(python=node_python(), site=site, pyver=pyver))
    (pub / "relay.py").write_text(RELAY)
    (pub / "count_nodes.py").write_text(
        "import ray\nray.init(address='auto', logging_level='ERROR')\n"
        "print('ALIVE_NODES', sum(1 for n in ray.nodes() if n['Alive']))\n"
    )
    (tmp / "keys" / "auth_token").write_text(secrets.token_hex(32))
    # The head's autoscaler reaches the worker with plain ssh (no ProxyCommand): the port comes from here.
    (home / ".ssh" / "config").write_text(f"Host {HEAD} {WORKER}\n    Port {ssh_port}\n")
    shutil.chown(home / ".ssh" / "config", user, "nogroup")
    config_path = tmp / "cluster.yaml"
    config = concrete_config(yaml.safe_load(TEMPLATE.read_text()), tmp, ports, ssh_port, user)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


def wait_for_worker(timer: Timer, ray_cli: list[str], config: Path, tmp: Path, timeout: float) -> None:
    """Until the head's autoscaler has set up the worker over SSH and its raylet joined (2 nodes alive)."""
    deadline = time.time() + timeout
    with timer.step("worker joined (autoscaler on the head, over SSH)"):
        while True:
            out = timer.run([*ray_cli, "exec", str(config), f"python {tmp / 'pub' / 'count_nodes.py'}"],
                            "count_nodes", check=False, quiet=True)
            if "ALIVE_NODES 2" in out:
                return
            if time.time() > deadline:
                raise StepFailed("worker joined", f"still not 2 nodes after {timeout:.0f} s; last: {out[-800:]}")
            time.sleep(10)


def run(args, tmp: Path, user: str, marker: str) -> None:
    missing = [tool for tool in (SSHD, "ssh", "ssh-keygen", "rsync", "useradd", "userdel") if shutil.which(tool) is None]
    if missing:
        raise Skip(f"missing {', '.join(missing)}: apt-get install -y openssh-server openssh-client rsync")
    for folder, mode in (("keys", 0o700), ("pub", 0o755), ("launcher", 0o700), ("l", 0o700), ("t", 0o700)):
        (tmp / folder).mkdir(mode=mode)
    home = make_user(tmp, user)
    node_env = {MARK_ENV: marker, "RAY_TMPDIR": str(tmp / "n"), "RAY_USAGE_STATS_ENABLED": "0"}
    # The launcher's HOME, Ray temp folder and TMPDIR (Ray's config cache) inside the run's folder too.
    env = {**os.environ, MARK_ENV: marker, "HOME": str(tmp / "launcher"), "RAY_TMPDIR": str(tmp / "l"),
           "TMPDIR": str(tmp / "t"), "RAY_USAGE_STATS_ENABLED": "0"}
    timer = Timer(tmp / "logs", env, REPO)
    with timer.step(f"sshd started ({HEAD} + {WORKER})"):
        sshd, ssh_port = start_sshd(tmp, user, node_env, env)
    try:
        ports = {name: free_port(HEAD, WORKER) for name in ("mlflow", "gcs", "dashboard", "client", "head_agent",
                                                           "worker_agent")}
        config_path = write_files(tmp, home, user, ssh_port, ports)
        launch(args, timer, tmp, config_path, f"http://{HEAD}:{ports['mlflow']}")
        sshd_group = _group(sshd.pid)
        left = [p for p in marked_pids(marker, settle=30) if p[0] not in sshd_group]
    finally:
        _stop_group(sshd)
    if left:
        raise StepFailed("after ray down", "still running: " + "; ".join(cmd for _, cmd in left))
    print(f"ray up -> submit -> down passed; {timer.summary()}", flush=True)


def launch(args, timer: Timer, tmp: Path, config_path: Path, tracking: str) -> None:
    """ray up, wait for the worker, ray submit, check MLflow; then, whatever happened, stop MLflow and ray down."""
    ray_cli = [str(Path(sys.executable).parent / "ray")]
    space = tiny_space(tmp / "pub" / "space.yaml", args.models, "vmbench-rayup")
    try:
        timer.run([*ray_cli, "up", "-y", "--no-config-cache", str(config_path)], "ray up")
        wait_for_worker(timer, ray_cli, config_path, tmp, args.timeout)
        print(f"   listening: {listeners(timer.env[MARK_ENV])}", flush=True)
        timer.run([*ray_cli, "submit", str(config_path), str(REPO / "cluster" / "sweep.py"), "--", "--space", str(space),
                   "--tracking-uri", tracking, "--storage-path", str(tmp / "shared" / "ray")], "ray submit (sweep)")
        with timer.step("MLflow check"):
            print("   " + check_final_runs(tracking, "vmbench-rayup", args.models, seeds=1), flush=True)
    finally:
        timer.run([*ray_cli, "exec", str(config_path), "kill $(cat ~/mlflow.pid)"], "ray exec (stop MLflow)", check=False)
        timer.run([*ray_cli, "down", "-y", str(config_path)], "ray down", check=False)


def _group(pgid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout
    return {int(pid) for pid, group in (line.split() for line in out.splitlines()) if int(group) == pgid}


def _stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def cleanup(tmp: Path, user: str, marker: str, keep: bool, made_run_dir: bool) -> None:
    stop_marked(marker)
    subprocess.run(["userdel", user], capture_output=True)
    # Ray's SSH ControlMaster sockets: a folder Ray itself hard-codes as /tmp/ray_ssh_<hash of the user>
    # (ray/autoscaler/_private/command_runner.py), not a path of this machine.
    for name in (user, "root"):
        folder = Path(f"/tmp/ray_ssh_{hashlib.sha256(name.encode()).hexdigest()[:10]}")
        cluster = folder / hashlib.sha256(f"vmbench-rayup-{tmp.name[-6:].lower()}".encode()).hexdigest()[:10]
        shutil.rmtree(folder if name == user else cluster, ignore_errors=True)
    if made_run_dir:
        shutil.rmtree("/run/sshd", ignore_errors=True)
    if keep:
        print(f"kept {tmp}", flush=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["unet"], help="models of the tiny sweep (default unet)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the worker node")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("SKIP: needs root (a temporary user for the cluster, sshd)", file=sys.stderr)
        return 77
    # A signal ends the run through the same cleanup as an error.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    tmp = Path(tempfile.mkdtemp(prefix="vmbru", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    tmp.chmod(0o711)  # the cluster user reaches its home and the shared files inside, nothing else
    user, marker = f"vmbru{secrets.token_hex(3)}", f"{tmp.name}-{secrets.token_hex(4)}"
    made_run_dir = not os.path.isdir("/run/sshd")
    if made_run_dir:
        os.makedirs("/run/sshd", mode=0o755)  # sshd's privilege-separation folder, absent until a first sshd
    try:
        run(args, tmp, user, marker)
        return 0
    except Skip as skip:
        print(f"SKIP: {skip}", file=sys.stderr, flush=True)
        return 77
    except StepFailed as failed:
        print(f"FAILED: {failed}", file=sys.stderr, flush=True)
        return 1
    finally:
        cleanup(tmp, user, marker, args.keep, made_run_dir)


if __name__ == "__main__":
    sys.exit(main())
