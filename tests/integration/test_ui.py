"""``vmbench ui``: MLflow's UI on loopback over the sweep store, seen in headless Chromium."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vmbench import tracking as T

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def sweep_store(tmp_path):
    """A store holding a sweep as vmbench logs it: a parent run and three nested trial runs."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("ui-test", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="sweep-ui-visible", tags={T.TAG_KIND: "sweep", T.TAG_SWEEP: "ui"})
    for i in range(3):
        child = client.create_run(
            experiment_id,
            run_name=f"trial-{i}",
            tags={T.TAG_KIND: "trial", T.TAG_STAGE: "search", T.TAG_PARENT: parent.info.run_id},
        )
        client.log_metric(child.info.run_id, "val_dsc", 0.5 + i / 10, step=1)
        client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    return uri, experiment_id


def start_ui(uri: str):
    process = subprocess.Popen(
        [sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", uri],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = process.stdout.readline()
    assert " at http://127.0.0.1:" in line, line
    return process, line.split(" at ")[1].split()[0]


def test_ui_binds_loopback_shows_runs_and_stops_on_ctrl_c(sweep_store, tmp_path):
    uri, experiment_id = sweep_store
    process, url = start_ui(uri)
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert response.status == 200
        port = int(url.rsplit(":", 1)[1])
        # A foreign Host header (DNS rebinding) is refused by MLflow's security middleware.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": "evil.example.com"})
        assert conn.getresponse().status == 403
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (the README test command installs Debian's chromium)")
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=20000", "--dump-dom",
             f"{url}/#/experiments/{experiment_id}/runs"],
            capture_output=True, text=True, timeout=120,
        ).stdout
        assert "sweep-ui-visible" in dom
        # The footer counts the parent and its three trials ("4 matching runs", split by tags).
        text = re.sub(r"<[^>]+>", " ", dom)
        assert re.search(r"\b4\s+matching runs", text), re.findall(r".{0,40}matching runs", text)
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=3)


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")


@needs_ipv6
def test_free_port_and_url_for_ipv6_hosts():
    from vmbench import ui

    port = ui.free_port("::1")  # was socket.gaierror: an AF_INET socket cannot bind '::1'
    assert 0 < port < 65536
    assert ui.local_url("::1", port) == f"http://[::1]:{port}"
    assert ui.local_url("::", 5000) == "http://[::1]:5000"  # the wildcard's loopback, bracketed
    assert ui.local_url("0.0.0.0", 5000) == "http://127.0.0.1:5000"
    assert ui.local_url("localhost", 5000) == "http://localhost:5000"


def test_unknown_host_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--host", "no-such-host.invalid"],
        capture_output=True, text=True, timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "--host no-such-host.invalid" in lines[0], done.stderr


@needs_ipv6
def test_ui_serves_on_ipv6_loopback(sweep_store):
    uri, _ = sweep_store
    process = subprocess.Popen(
        [sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", uri, "--host", "::1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        line = process.stdout.readline()
        assert " at http://[::1]:" in line, line
        url = line.split(" at ")[1].split()[0]
        # The browser's Host header is [::1]:PORT, which MLflow's middleware accepts.
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=5", timeout=10) as response:
            assert response.status == 200 and b"ui-test" in response.read()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


# -- beyond loopback: authentication; failed starts leave nothing running ------------------------


def _processes_with(marker: str) -> list[str]:
    """Command lines of the processes whose environment holds ``marker`` (every child inherits it)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes().split(b"\0"):
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:  # ended while we looked, or not ours to read
            continue
    return found


def _marked_env(tmp_path) -> tuple[dict, str]:
    marker = f"VMBENCH_UI_TEST_MARK={tmp_path.name}"
    key, value = marker.split("=", 1)
    return {**os.environ, key: value}, marker


def _wait_gone(marker: str, timeout: float = 30.0) -> list[str]:
    deadline = time.time() + timeout
    while (left := _processes_with(marker)) and time.time() < deadline:
        time.sleep(0.5)
    return left


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find processes")


def test_which_hosts_need_authentication():
    from vmbench import ui

    # Only this machine reaches a loopback address; a wildcard or any other address reaches the network.
    for host in ("127.0.0.1", "127.0.0.2", "localhost"):
        assert ui.is_loopback(host), host
    for host in ("0.0.0.0", "192.0.2.10"):  # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never bound here
        assert not ui.is_loopback(host), host
    if _ipv6_loopback():
        assert ui.is_loopback("::1") and not ui.is_loopback("::")
    for port in (0, -1, 65536, 99999):
        with pytest.raises(ValueError, match=f"--port {port}: not a TCP port"):
            ui.validate_port(port)
    for port in (None, 1, 5000, 65535):
        ui.validate_port(port)


@needs_proc
def test_port_out_of_range_is_refused_before_anything_starts(tmp_path):
    env, marker = _marked_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--port", "99999"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    # argparse's usage and one error line that names the option and the value (was 86 lines).
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) <= 4, done.stderr
    assert "--port" in last and "99999" in last and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no server ever started
    assert _wait_gone(marker, 5) == []


def test_port_in_use_is_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and f"--port {port}: already in use" in lines[0], done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@needs_proc
def test_failed_start_stops_every_server_process(tmp_path):
    """The store's schema is one MLflow does not know: MLflow's server starts, fails and exits; vmbench
    reports it in one line and stops every process of the server's group (MLflow starts a job runner
    and consumers)."""
    import sqlite3

    env, marker = _marked_env(tmp_path)
    store = tmp_path / "mlflow.db"
    # An MLflow store's tables, so vmbench's own read-only check passes (a file that is not a store
    # is refused before any server starts), at a schema version no MLflow release has.
    con = sqlite3.connect(store)
    con.executescript("CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES "
                      "('0000notreal'); CREATE TABLE experiments (x); CREATE TABLE runs (x);")
    con.commit()
    con.close()
    done = subprocess.run(
        [sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", f"sqlite:///{store}"],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("vmbench: error: the MLflow server exited"), done.stderr[-2000:]
    assert _wait_gone(marker) == []


def _request(port: int, password: str | None = None, source: str = "127.0.0.2") -> int:
    """GET an API route from ``source`` (another address than the server's 127.0.0.1); returns the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180, source_address=(source, 0))
    headers = {}
    if password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
    conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=5", headers=headers)
    try:
        return conn.getresponse().status
    finally:
        conn.close()


@needs_proc
def test_all_interfaces_need_the_printed_password(sweep_store, tmp_path):
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (Flask-WTF)")
    uri, _ = sweep_store
    env, marker = _marked_env(tmp_path)
    env.pop("VMBENCH_UI_PASSWORD", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", uri, "--host", "0.0.0.0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True, env=env,
    )
    try:
        line = process.stdout.readline()
        assert " at http://127.0.0.1:" in line and "user admin, password " in line, line
        port = int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1])
        password = line.split("password ")[1].split(")")[0]
        assert len(password) >= 12 and "shown once" in process.stdout.readline()
        assert _request(port) == 401  # no credentials, from 127.0.0.2
        assert _request(port, "not-the-password") == 401
        assert _request(port, password) == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert _wait_gone(marker) == []


def test_opting_out_of_authentication_is_loud(capsys):
    from vmbench import ui
    from vmbench.cli.ui import _announce

    server = ui.UIServer(process=None, url="http://127.0.0.1:5055")
    _announce(server, "sqlite:///x.db", "0.0.0.0", no_auth=True)
    out, err = capsys.readouterr()
    assert "password" not in out and "WARNING" in err and "WITHOUT authentication" in err and "5055" in err


def test_sweep_addresses_open_the_runs_view_and_an_unknown_sweep_is_one_line(sweep_store, capsys):
    from urllib.parse import parse_qs, urlsplit

    from vmbench.cli import main
    from vmbench.ui import sweep_location, sweep_urls

    uri, experiment_id = sweep_store
    client = T.client(uri)
    # The fixture's sweep was made by hand, without the saved view vmbench's sweeps get: a filter in the URL.
    where = sweep_location(uri, "ui")
    route = urlsplit(urlsplit(sweep_urls("http://127.0.0.1:5000", *where)[0]).fragment)
    assert parse_qs(route.query) == {"workflowType": ["machine_learning"], "searchFilter": ["tags.`vmbench.sweep` = 'ui'"]}
    # vmbench gives an experiment it logs to the tags it lacks: the model-training kind and the saved view.
    assert T.get_or_create_experiment(client, "ui-test") == experiment_id
    assert {T.TAG_EXPERIMENT_KIND, T.TAG_SAVED_VIEW_PREFIX + T.RUNS_VIEW_KEY} <= set(client.get_experiment(experiment_id).tags)
    # A sweep vmbench started has its own saved view (open_sweep_run): the address opens it, filter and columns.
    parent_id = T.open_sweep_run(client, experiment_id, sweep="ui2", experiment="ui-test", source="s.yaml", space_hash="0",
                                 resume=False, tags={}, plan="")
    where = sweep_location(uri, "ui2")
    runs, parent = sweep_urls("http://127.0.0.1:5000", *where)
    route = urlsplit(urlsplit(runs).fragment)
    assert route.path == f"/experiments/{experiment_id}/runs"
    assert parse_qs(route.query) == {"workflowType": ["machine_learning"], "viewStateShareKey": ["vmbench-sweep-ui2"]}
    envelope = json.loads(client.get_experiment(experiment_id).tags["mlflow.sharedViewState.vmbench-sweep-ui2"])
    state = json.loads(envelope["state"])
    assert envelope["name"] == "vmbench: sweep ui2" and state["searchFilter"] == "tags.`vmbench.sweep` = 'ui2'"
    assert "metrics.`test_dsc`" in state["selectedColumns"]
    assert parent == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{parent_id}?workflowType=machine_learning"
    # An unknown sweep fails before any server starts: one line, exit status 2.
    assert main(["ui", "--tracking-uri", uri, "--sweep", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmbench: error: --sweep nope: no sweep of that name") and "\n" not in err
