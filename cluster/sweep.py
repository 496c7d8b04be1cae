"""Entry point of a sweep on a running Ray cluster.

    ray submit cluster/config.yaml cluster/sweep.py -- --space search_spaces/vmunet.yaml
    ray job submit --address http://HEAD:8265 --working-dir . -- python cluster/sweep.py --space search_spaces/vmunet.yaml

It runs on the head (the driver), attaches to the cluster (``--address auto``) and logs to the
MLflow server on the head (``http://HEAD:5000`` unless ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` says otherwise); every trial learns that URI through Ray's runtime
environment. Trials checkpoint to ``--storage-path`` (default: ``$VMBENCH_STORAGE_PATH``), which
must be shared by all nodes (S3 or NFS) when the cluster has more than one node.

A relative ``--space`` is looked up in the working directory first, then in the vmbench checkout:
``ray submit`` runs this script in the home folder, not in the repository it mounts
(``/home/ray/vmbench`` in config.yaml, ``/opt/vmbench`` in local.yaml). A relative ``data_root``
inside the space file is resolved against the checkout holding that file (else the file's own
folder), never against this working directory, into the absolute path every node then reads; a
node that lacks it fails its trials with one line naming the node and the folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Arguments naming files of the repository (looked up in the checkout too); the other path
# arguments (--runs-dir, --storage-path) are outputs, made absolute against the working directory.
REPO_PATH_FLAGS = ("--space",)


def repo_roots() -> list[Path]:
    """The vmbench checkouts (folders holding cluster/sweep.py): this script's, the installed package's.

    ``ray submit`` copies this file alone to ``~/sweep.py`` on the head, so its own location names
    no checkout there; the cluster files install the mounted checkout in editable mode, and the
    package folder of an editable install sits in the repository root.
    """
    candidates = [Path(__file__).resolve().parents[1]]
    try:
        import vmbench

        candidates.append(Path(vmbench.__file__).resolve().parents[1])
    except ImportError:  # not installed here: only this script's own checkout can hold the files
        pass
    roots: list[Path] = []
    for root in candidates:
        if (root / "cluster" / "sweep.py").is_file() and root not in roots:
            roots.append(root)
    return roots


def resolve_repo_path(flag: str, value: str, cwd: Path | None = None, roots: list[Path] | None = None) -> str:
    """``value`` as an absolute path: as given, else in the working directory, else in a checkout.

    Raises FileNotFoundError with one line that names every location tried (an absolute path is
    returned as it is; ``vmbench sweep`` reports it if missing).
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    cwd = Path.cwd() if cwd is None else cwd
    roots = repo_roots() if roots is None else roots
    for candidate in (cwd / path, *(root / path for root in roots)):
        if candidate.exists():
            return str(candidate)
    here = f"{flag} {value}: not found at {cwd / path} (working directory)"
    if not roots:
        raise FileNotFoundError(f"{here}, and no vmbench checkout is installed (pip install -e, as the cluster files do)")
    checkout = " or ".join(str(root / path) for root in roots)
    raise FileNotFoundError(f"{here} or {checkout} (vmbench checkout)")


def ray_package_root(script: Path) -> Path | None:
    """The folder of the job's uploaded working directory when this script runs from one, else None."""
    root = script.resolve().parents[1]
    return root if root.parent.name == "working_dir_files" else None


def rerun_from_stable_copy(argv: list[str]) -> None:
    """Run this script again from a copy of the job's working directory that Ray never deletes.

    Ray garbage-collects a job's uploaded working directory once the last task sharing it ends
    (the per-node data check does, before the trials start), while this driver still imports
    vmbench modules from it: a later import then fails with ModuleNotFoundError. The copy is
    named after the package (its name is a hash of the contents), so a rerun reuses it.
    """
    package = ray_package_root(Path(__file__))
    if package is None:  # also the copy itself: it lies under ray-jobs/, not working_dir_files/
        return
    import shutil

    cache = Path(os.environ.get("VMBENCH_CACHE") or Path.home() / ".cache" / "vmbench")
    stable = cache / "ray-jobs" / package.name
    if not (stable / "cluster" / "sweep.py").is_file():
        partial = stable.with_name(stable.name + f".partial-{os.getpid()}")
        shutil.copytree(package, partial, symlinks=True)
        try:
            partial.rename(stable)
        except OSError:  # another driver of the same package made it first
            shutil.rmtree(partial, ignore_errors=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(stable), env.get("PYTHONPATH", "")) if p)
    os.chdir(stable)
    script = str(stable / "cluster" / "sweep.py")
    os.execve(sys.executable, [sys.executable, script, *argv], env)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        rerun_from_stable_copy(sys.argv[1:])
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
                if flag in REPO_PATH_FLAGS:
                    try:
                        args[i] = resolve_repo_path(flag, args[i])
                    except FileNotFoundError as err:
                        print(f"cluster/sweep.py: {err}", file=sys.stderr)
                        return 2
                else:
                    args[i] = os.path.abspath(args[i])
    if "--runs-dir" not in args:
        args += ["--runs-dir", os.path.abspath("vmbench-runs")]
    os.chdir(os.path.expanduser("~"))
    verbose = [flag for flag in ("-v", "--verbose") if flag in args]
    args = [a for a in args if a not in verbose]
    return vmbench_main([*verbose[:1], "sweep", *args])


if __name__ == "__main__":
    sys.exit(main())
