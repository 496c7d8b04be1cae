"""Fixtures shared by the test files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

KEY_LISTS = Path(__file__).parent / "data" / "keys"
# The benchmark scripts' helpers (localcluster, cluster_harness) are modules of benchmarks/, not of
# the package: tests import them as the scripts next to them do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="session", autouse=True)
def generated_data_cache(tmp_path_factory) -> Path:
    """Generated data sets (synthetic-isic, synthetic-synapse) go to one folder for the whole run:
    never the user's ~/.cache, and each data set is written once however many tests build it. A test
    that checks generation itself points VMBENCH_CACHE at its own folder (monkeypatch)."""
    cache = tmp_path_factory.mktemp("vmbench-cache")
    previous = os.environ.get("VMBENCH_CACHE")
    os.environ["VMBENCH_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("VMBENCH_CACHE", None)
    else:
        os.environ["VMBENCH_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory) -> str:
    """MLflow runs of commands run without --tracking-uri (vmbench train ...) go to a store of the test
    run, never ./vmbench-runs in the checkout. Tests of the default store delete the variable."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(autouse=True)
def restore_tracking_uri(tracking_store):
    """A test that points MLflow at its own store (``mlflow.set_tracking_uri`` also sets
    MLFLOW_TRACKING_URI) leaves the next tests on the run's store, not on a server it has stopped."""
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != tracking_store:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_store
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.get_tracking_uri() != tracking_store:
        mlflow.set_tracking_uri(tracking_store)


@pytest.fixture(scope="session")
def official_keys():
    """``read(file, prefix="")``: the (key, shape) pairs of an official state dict listed in
    tests/data/keys/ (written from the official code built on CPU); with ``prefix``, only the keys
    under it, with the prefix removed."""

    def read(name: str, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
        rows = []
        for line in (KEY_LISTS / name).read_text().splitlines():
            if not line.strip() or line.startswith("#") or not line.startswith(prefix):
                continue
            key, shape = line.split(" ", 1)
            rows.append((key[len(prefix):], tuple(int(n) for n in shape.strip("()").split(",") if n.strip())))
        return rows

    return read


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: small models run faster without thread hand-offs, and
    timings do not depend on how busy the other core is."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
