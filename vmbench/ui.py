"""``vmbench ui``: the MLflow UI over vmbench's store, on loopback unless told otherwise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from vmbench import tracking


# Wildcard hosts bind every interface; the URL printed (and polled) is the matching loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _address(host: str) -> tuple[socket.AddressFamily, tuple]:
    """Socket family and address of ``host``: an IPv4 or IPv6 address or a host name."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: not an IP address or a known host name ({err.strerror})") from None
    return family, sockaddr


def free_port(host: str = "127.0.0.1") -> int:
    family, sockaddr = _address(host)  # AF_INET6 for '::1': an AF_INET socket cannot bind it
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(sockaddr)
        return sock.getsockname()[1]


def local_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` for a client on this machine; IPv6 addresses in brackets (RFC 3986)."""
    host = _LOOPBACK.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_command(tracking_uri: str, host: str, port: int, allowed_hosts: str | None, workers: int = 1) -> list[str]:
    """An argument list (never a shell string): ``python -m mlflow server ...``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with status {process.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the MLflow server did not answer at {url}/health within {timeout:.0f} s")


def start(tracking_uri: str | None = None, runs_dir: str | Path = tracking.DEFAULT_RUNS_DIR, host: str = "127.0.0.1",
          port: int | None = None, allowed_hosts: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start the server in its own process group; returns (process, base URL) once healthy."""
    uri = tracking_uri or tracking.default_tracking_uri(runs_dir)
    _address(host)  # an unknown host is one line here, not a server that never answers
    port = port or free_port(_LOOPBACK.get(host, host))
    # The server's own chatter goes to stderr, so stdout carries only vmbench's URL line.
    process = subprocess.Popen(server_command(uri, host, port, allowed_hosts), stdout=2, start_new_session=True)
    url = local_url(host, port)
    try:
        wait_healthy(url, process)
    except BaseException:
        stop(process)
        raise
    return process, url


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate the server and its workers (the whole process group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    except ProcessLookupError:
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(tracking_uri=None, runs_dir=tracking.DEFAULT_RUNS_DIR, host="127.0.0.1", port=None, allowed_hosts=None) -> int:
    # Explicit handlers: a process started in the background may inherit SIGINT as ignored, and
    # SIGTERM (from a service manager) should stop the server as cleanly as Ctrl-C.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    process, url = start(tracking_uri, runs_dir, host, port, allowed_hosts)
    print(f"MLflow UI for {tracking_uri or tracking.default_tracking_uri(runs_dir)} at {url}  (Ctrl-C stops it)", flush=True)
    try:
        return process.wait()
    except KeyboardInterrupt:
        print("stopping the MLflow UI", flush=True)
        return 0
    finally:
        stop(process)
