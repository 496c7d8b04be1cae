"""The MLflow UI over vmbench's store, on loopback unless told otherwise (``vmbench ui``: :mod:`vmbench.cli.ui`).

On loopback (``127.0.0.0/8``, ``::1``, ``localhost``; the default) the server is open, as before:
only this machine can reach it, and MLflow's Host-header check stops DNS rebinding. Any other
host (``0.0.0.0``, ``::``, a LAN address) would serve every run, read and write, to the whole
network, so it is served through MLflow's basic-auth app (``mlflow server --app-name basic-auth``,
which needs ``mlflow[auth]``): one admin user, password from ``$VMBENCH_UI_PASSWORD`` or generated
and printed once. Its user store lives in a temporary folder for the lifetime of the server, so
the printed password is always the one that works. ``no_auth=True`` serves without
authentication and says so loudly.

The server runs in its own process group; every exit path stops the whole group (MLflow's
server starts worker processes of its own), so nothing is left running.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vmbench import tracking
from vmbench.errors import BackendUnavailableError, ConfigError, DataError

# Wildcard hosts bind every interface; the URL printed (and polled) is the matching loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}
PASSWORD_ENV = "VMBENCH_UI_PASSWORD"
ADMIN_USER = "admin"


@dataclass
class UIServer:
    process: subprocess.Popen
    url: str
    username: str | None = None  # set when the server asks for credentials
    password: str | None = None
    password_generated: bool = False
    auth_dir: Path | None = None  # the basic-auth app's config and user store, removed on stop


def _address(host: str) -> tuple[socket.AddressFamily, tuple]:
    """Socket family and address of ``host``: an IPv4 or IPv6 address or a host name."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: not an IP address or a known host name ({err.strerror})") from None
    return family, sockaddr


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (only this machine reaches it)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: not an IP address or a known host name ({err.strerror})") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def validate_port(port: int | None) -> None:
    """A TCP port 1..65535, or None for a free one; checked before anything starts."""
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port; give one in 1..65535, or leave --port out for a free one")


def port_in_use(host: str, port: int) -> bool:
    """Whether ``port`` cannot be bound on ``host`` (checked with SO_REUSEADDR, as the server binds)."""
    family, sockaddr = _address(host)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    family, sockaddr = _address(host)  # AF_INET6 for '::1': an AF_INET socket cannot bind it
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(sockaddr)
        return sock.getsockname()[1]


def local_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` for a client on this machine; IPv6 addresses in brackets (RFC 3986)."""
    host = _LOOPBACK.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_command(tracking_uri: str, host: str, port: int, allowed_hosts: str | None, workers: int = 1,
                   app_name: str | None = None) -> list[str]:
    """An argument list (never a shell string): ``python -m mlflow server ...``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    if app_name:
        cmd += ["--app-name", app_name]
    return cmd


def auth_environment(auth_dir: Path, password: str) -> dict[str, str]:
    """Environment for ``mlflow server --app-name basic-auth``: its config file and admin user.

    MLflow ships no admin password and reads its user store from ``database_uri`` in the file
    named by ``MLFLOW_AUTH_CONFIG_PATH`` (by default a ``basic_auth.db`` in the working directory);
    the password goes through the environment, never into a file.
    """
    config = auth_dir / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{auth_dir / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        # Flask's session/CSRF key for the auth app's forms; a fresh one per server.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }


def _admin_password() -> tuple[str, bool]:
    """(password, generated): ``$VMBENCH_UI_PASSWORD`` or a new random one."""
    given = os.environ.get(PASSWORD_ENV, "")
    if given:
        if len(given) < 12:  # MLflow's own rule for passwords; its error would come from deep inside
            raise ConfigError(f"${PASSWORD_ENV}: MLflow's basic-auth app needs at least 12 characters")
        return given, False
    return secrets.token_urlsafe(18), True


def _require_auth_app(host: str) -> None:
    if importlib.util.find_spec("flask_wtf") is None:
        raise BackendUnavailableError(
            f"--host {host} serves the UI beyond this machine, so it needs MLflow's basic-auth app, which needs "
            "Flask-WTF: pip install 'mlflow[auth]' (or bind a loopback address)"
        )


def _processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, from /proc (Linux; else empty)."""
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        rows.append((int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return rows


def _web_server_running(pid: int) -> bool | None:
    """Whether the server's web process (uvicorn, a child of ``mlflow server``) runs; None before it appears."""
    for child, state, parent, _ in _processes():
        if parent == pid and state != "Z":
            try:
                if b"uvicorn" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return None


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline, web_started = time.time() + timeout, False
    while time.time() < deadline:
        if process.poll() is not None:
            raise BackendUnavailableError(f"the MLflow server exited with status {process.returncode} before answering at {url} "
                                          "(its messages are above)")
        # MLflow 3.17's `mlflow server` stays alive when its web process dies (a bad store, a taken
        # port): that is a failed start too, not something to wait out.
        running = _web_server_running(process.pid)
        if web_started and not running:
            raise BackendUnavailableError(f"the MLflow server exited before answering at {url} (its web process ended; "
                               "its messages are above)")
        web_started = web_started or bool(running)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise BackendUnavailableError(f"the MLflow server did not answer at {url}/health within {timeout:.0f} s")


def start(tracking_uri: str | None = None, runs_dir: str | Path = tracking.DEFAULT_RUNS_DIR, host: str = "127.0.0.1",
          port: int | None = None, allowed_hosts: str | None = None, no_auth: bool = False) -> UIServer:
    """Start the server in its own process group; returns once it answers.

    Everything the user gave is checked before a process starts; on any failure after that the
    whole process group is stopped before the error propagates.
    """
    validate_port(port)
    uri = tracking_uri or tracking.default_tracking_uri(runs_dir)
    needs_auth = not is_loopback(host) and not no_auth  # also rejects an unknown host in one line
    if port and port_in_use(host, port):
        raise ConfigError(f"--port {port}: already in use on {host}; pick another, or leave --port out for a free one")
    if needs_auth:
        _require_auth_app(host)
        password, generated = _admin_password()
    port = port or free_port(_LOOPBACK.get(host, host))
    env, auth_dir = dict(os.environ), None
    if needs_auth:
        auth_dir = Path(tempfile.mkdtemp(prefix="vmbench-ui-auth-"))
        env.update(auth_environment(auth_dir, password))
    # The server's own chatter goes to stderr, so stdout carries only vmbench's lines.
    cmd = server_command(uri, host, port, allowed_hosts, app_name="basic-auth" if needs_auth else None)
    server = UIServer(subprocess.Popen(cmd, stdout=2, env=env, start_new_session=True), local_url(host, port),
                      auth_dir=auth_dir)
    if needs_auth:
        server.username, server.password, server.password_generated = ADMIN_USER, password, generated
    try:
        wait_healthy(server.url, server.process)
    except BaseException:
        stop(server)
        raise
    return server


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting for their parent do not count)."""
    if not Path("/proc").is_dir():  # not Linux: ask the kernel about the group as a whole
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    return any(group == pgid and state != "Z" for _, state, _, group in _processes())


def stop(server: UIServer, timeout: float = 15.0) -> None:
    """Stop the server and every process of its group, even when the leader has already exited."""
    pgid = server.process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + timeout
        while time.time() < deadline:
            server.process.poll()  # reap the leader, else it stays a zombie of ours
            if not _group_alive(pgid):
                break
            time.sleep(0.1)
        else:
            continue  # still running after SIGTERM: SIGKILL
        break
    server.process.poll()
    if server.auth_dir is not None:
        shutil.rmtree(server.auth_dir, ignore_errors=True)


def sweep_location(tracking_uri: str, sweep: str) -> tuple[str, str, str, bool]:
    """(experiment id, parent run id, sweep name, whether the sweep has its saved runs view) of sweep
    ``sweep`` in the store; a one-line error if there is none."""
    client = tracking.client(tracking_uri)
    with tracking.mlflow_errors(tracking_uri):
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=(
            f"tags.`{tracking.TAG_KIND}` = '{tracking.KIND_SWEEP}' and tags.`{tracking.TAG_SWEEP}` = '{sweep}'"),
            max_results=1) if experiments else []
        if not runs:
            raise DataError(f"--sweep {sweep}: no sweep of that name in {tracking_uri} (a sweep's name is its --name "
                            "or its search-space file's name field)")
        experiment = client.get_experiment(runs[0].info.experiment_id)
    has_view = tracking.TAG_SAVED_VIEW_PREFIX + tracking.sweep_view_key(sweep) in experiment.tags  # older sweeps lack it
    return experiment.experiment_id, runs[0].info.run_id, sweep, has_view


# The UI's model-training workspace (runs, models, system metrics) rather than its GenAI one: the
# sidebar's switch, which the UI also reads from this query parameter.
TRAINING_VIEW = {"workflowType": "machine_learning"}


def _query(params: dict[str, str]) -> str:
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def start_url(url: str) -> str:
    """The experiments list in the model-training workspace."""
    return f"{url}/#/experiments?{_query(TRAINING_VIEW)}"


def runs_url(url: str, experiment_id: str, view: str = tracking.RUNS_VIEW_KEY) -> str:
    """An experiment's runs table in one of vmbench's saved views (test metrics as columns)."""
    return f"{url}/#/experiments/{experiment_id}/runs?{_query({**TRAINING_VIEW, 'viewStateShareKey': view})}"


def sweep_urls(url: str, experiment_id: str, run_id: str, sweep: str, has_view: bool = True) -> tuple[str, str]:
    """The UI's runs table of the sweep's runs (its saved view; for a sweep started before vmbench saved
    views, a filter in the URL, which shows MLflow's default columns), and the parent run's page."""
    if has_view:
        runs = runs_url(url, experiment_id, tracking.sweep_view_key(sweep))
    else:
        query = _query({**TRAINING_VIEW, "searchFilter": f"tags.`{tracking.TAG_SWEEP}` = '{sweep}'"})
        runs = f"{url}/#/experiments/{experiment_id}/runs?{query}"
    return (runs,
            f"{url}/#/experiments/{experiment_id}/runs/{run_id}?{_query(TRAINING_VIEW)}")
