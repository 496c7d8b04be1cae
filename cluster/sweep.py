"""Entry point of a sweep on a running Ray cluster.

    ray submit cluster/config.yaml cluster/sweep.py -- --space search_spaces/vmunet.yaml
    ray job submit --address http://HEAD:8265 --working-dir . -- python cluster/sweep.py --space search_spaces/vmunet.yaml

It runs on the head (the driver), attaches to the cluster (``--address auto``) and logs to the
MLflow server on the head (``http://HEAD:5000`` unless ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` says otherwise); every trial learns that URI through Ray's runtime
environment. Trials checkpoint to ``--storage-path`` (default: ``$VMBENCH_STORAGE_PATH``), which
must be shared by all nodes (S3 or NFS) when the cluster has more than one node.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    import ray

    from vmbench.cli import main as vmbench_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--address" not in args:
        args += ["--address", os.environ.get("RAY_ADDRESS", "auto")]
    if "--tracking-uri" not in args and not os.environ.get("MLFLOW_TRACKING_URI"):
        # The driver runs on the head, where cluster/config.yaml starts the MLflow server.
        args += ["--tracking-uri", f"http://{ray.util.get_node_ip_address()}:5000"]
    if "--storage-path" not in args and os.environ.get("VMBENCH_STORAGE_PATH"):
        args += ["--storage-path", os.environ["VMBENCH_STORAGE_PATH"]]
    # Ray may garbage-collect a job's uploaded working directory once the last task that shared
    # it ends, while this driver still runs in it: resolve the paths given now, then move to a
    # folder that stays.
    for flag in ("--space", "--runs-dir", "--storage-path"):
        if flag in args:
            i = args.index(flag) + 1
            if i < len(args) and "://" not in args[i]:
                args[i] = os.path.abspath(args[i])
    if "--runs-dir" not in args:
        args += ["--runs-dir", os.path.abspath("vmbench-runs")]
    os.chdir(os.path.expanduser("~"))
    verbose = [flag for flag in ("-v", "--verbose") if flag in args]
    args = [a for a in args if a not in verbose]
    return vmbench_main([*verbose[:1], "sweep", *args])


if __name__ == "__main__":
    sys.exit(main())
