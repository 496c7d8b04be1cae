"""``vmbench ui``: MLflow's UI on loopback over the sweep store, seen in headless Chromium."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

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
