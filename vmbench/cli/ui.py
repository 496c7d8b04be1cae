"""``vmbench ui``: runs the MLflow UI of :mod:`vmbench.ui` in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys

from vmbench import tracking
from vmbench.cli.options import port, tracking_options
from vmbench.ui import PASSWORD_ENV, UIServer, is_loopback, start, start_url, stop, sweep_location, sweep_urls


def add_parsers(sub) -> None:
    p = sub.add_parser("ui", help="the MLflow UI over vmbench's runs (127.0.0.1, a free port)")
    tracking_options(p, "--tracking-uri", "--runs-dir")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=port, help="default: a free port")
    p.add_argument("--allowed-hosts", help="Host headers to accept when served under a DNS name (MLflow option)")
    p.add_argument("--no-auth", action="store_true", help="serve a non-loopback --host WITHOUT a login: every run, "
                   "read and write, to anyone who can reach it (default: a login, user admin, password from "
                   "$VMBENCH_UI_PASSWORD or printed once)")
    p.add_argument("--sweep", metavar="NAME", help="print the address of sweep NAME's runs (its experiment's runs "
                   "table filtered to the sweep, and its parent run's page) instead of the store's start page")
    p.set_defaults(func=cmd_ui)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _announce(server: UIServer, uri: str, host: str, no_auth: bool) -> None:
    line = f"MLflow UI for {uri} at {server.url}"
    if server.password is not None:
        shown = server.password if server.password_generated else f"${PASSWORD_ENV}"
        line += f"  (on {host}; user {server.username}, password {shown})"
    print(f"{line}  (Ctrl-C stops it)", flush=True)
    if server.password_generated:
        print(f"(the password is shown once; set ${PASSWORD_ENV} to choose it)", flush=True)
    if no_auth and not is_loopback(host):
        print(f"WARNING: --no-auth: every run, read and write, is served WITHOUT authentication to anyone who "
              f"can reach {host} on port {server.url.rsplit(':', 1)[1]}", file=sys.stderr, flush=True)


def cmd_ui(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or tracking.default_tracking_uri(args.runs_dir)
    where = sweep_location(uri, args.sweep) if args.sweep else None  # an unknown sweep fails before a server starts
    # Explicit handlers: a process started in the background may inherit SIGINT as ignored, and
    # SIGTERM (from a service manager) should stop the server as cleanly as Ctrl-C.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    server = start(args.tracking_uri, args.runs_dir, args.host, args.port, args.allowed_hosts, args.no_auth)
    try:
        _announce(server, uri, args.host, args.no_auth)
        if where is not None:
            runs, parent = sweep_urls(server.url, *where)
            print(f"sweep {args.sweep}: runs {runs}\n  parent run (verdict, leaderboard, report) {parent}", flush=True)
        else:
            print(f"experiments (model-training view): {start_url(server.url)}", flush=True)
        return server.process.wait()
    except KeyboardInterrupt:
        print("stopping the MLflow UI", flush=True)
        return 0
    finally:
        stop(server)
