"""What an evaluated training run records in MLflow: one set of tags, costs, metrics and artifacts.

A sweep's final runs and a single ``vmbench train`` run are recorded the same way, so that the
leaderboard and the MLflow UI read both alike: the tags of :mod:`vmbench.tracking`, the flattened
config as params, per-epoch metrics, ``test_*`` metrics of the test split (fractions; HD95 in
voxels), the cost metrics (parameters, GMACs, latency, training time, device-hours, peak memory,
epochs) and the artifacts ``eval/per_case.csv``, ``eval/summary.json``, the selected checkpoint and
a few prediction overlays. For the MLflow UI it also records the train and test splits as dataset
inputs (a content digest of the files read, the split as context), the selected checkpoint as a
logged model with the test metrics linked to it, and a description of the run.

A run folder records which MLflow run it belongs to (:attr:`RunDir.pointer`), so that ``--resume``
and ``vmbench evaluate`` find the run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import vmbench
from vmbench import tracking as T
from vmbench.config import ExperimentConfig
from vmbench.rundir import RunDir
from vmbench.errors import DataError
from vmbench.io import atomic_write

log = logging.getLogger("vmbench.engine")

__all__ = ["TEST_OVERLAYS", "dataset_digest", "dataset_files", "describe_run", "log_overlays", "read_run_pointer",
           "record_test_results", "run_costs", "run_tags", "write_run_pointer"]


def run_tags(cfg: ExperimentConfig, stage: str, device) -> dict[str, str]:
    """The tags every trained run carries (the sweep adds its own: sweep, study, node ids)."""
    from vmbench.ops import resolve_backend

    tags = {
        T.TAG_KIND: T.KIND_TRIAL,
        T.TAG_STAGE: stage,
        T.TAG_MODEL: cfg.model.name,
        T.TAG_DATASET: cfg.data.name,
        T.TAG_PROTOCOL: cfg.data.protocol,
        T.TAG_SEED: str(cfg.train.seed),
        T.TAG_SCAN_BACKEND: resolve_backend(None, device),
        T.TAG_VERSION: vmbench.__version__,
        T.TAG_GIT_SHA: T.git_revision(),
    }
    fold = getattr(cfg.data, "fold", None)
    if fold is not None:
        tags.update({T.TAG_FOLD: str(fold), T.TAG_FOLDS: str(cfg.data.folds)})
    tags.update(T.hardware_description(device))
    return tags


def run_costs(model, cfg: ExperimentConfig, img_size: tuple[int, int], result, gpu: float, device) -> dict[str, float]:
    """Cost metrics of a trained run, measured on the input the model is fed in training and test.

    That is the dataset's channel count: Synapse CT slices have 1 channel (the models, built
    with 3 input channels, repeat it themselves), ISIC images 3. Device-hours count the GPUs a
    run held (a CPU run counts as one device).
    """
    from vmbench import profiling

    in_chans = vmbench.dataset_info(cfg.data.name).in_chans
    train_time = sum(h.get("epoch_time_s", 0.0) for h in result.history)
    return {
        "n_params": profiling.count_parameters(model),
        "gmacs": profiling.count_gmacs(model, in_chans, img_size),
        "latency_ms": profiling.latency_ms(model, in_chans, img_size),
        "train_time_s": train_time,
        "device_hours": train_time / 3600 * (gpu if gpu > 0 else 1),
        "peak_mem_mb": profiling.peak_memory_mb(device),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
    }


TEST_OVERLAYS = 12  # test images drawn per final or single run: the report's examples are chosen among them


class _Spread:
    """``count`` items of ``dataset`` spread evenly over its order: on one split, the same ids for every model."""

    def __init__(self, dataset, count: int):
        n = len(dataset)
        self.dataset, self.is_volume = dataset, getattr(dataset, "is_volume", False)
        self.indices = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


def log_overlays(run: T.TrialRun, model, dataset, img_size: tuple[int, int], device, count: int = 4) -> None:
    """``count`` images of ``dataset``, spread over the split, with the ground truth (green) and the
    prediction (red) drawn over them, as ``overlays/<split>/<id>.png``."""
    from vmbench.visualize import overlays_for

    spread = _Spread(dataset, count)
    for name, png in overlays_for(model, spread, device, img_size, len(spread)):
        run.log_bytes(png, name, f"overlays/{dataset.split}")


def dataset_files(dataset) -> list[Path]:
    """The files a built split reads: ISIC image and mask pairs, Synapse slices or volumes, the image
    and mask files of a user folder or nnU-Net raw layout (``pairs``)."""
    files: list[Path] = []
    for sample in getattr(dataset, "samples", ()):
        files += [Path(sample.image), Path(sample.mask)]
    for pair in getattr(dataset, "pairs", ()):
        files += [Path(p) for p in pair.images] + ([Path(pair.mask)] if pair.mask is not None else [])
    for _, path in getattr(dataset, "slices", ()):
        if isinstance(path, (str, Path)):  # nnU-Net volumes list (case, slice index) here, their files in pairs
            files.append(Path(path))
    for _, source in getattr(dataset, "sources", ()):
        files += [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for _, p in source]
    return sorted(set(files))


def _file_digest(path: Path, cache: dict[str, list]) -> str:
    """SHA-256 of the file's bytes, reused while its size and modification time are those hashed."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    cached = cache.get(key)
    if cached and cached[:2] == stamp:
        return cached[2]
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    cache[key] = [*stamp, digest]
    return digest


def dataset_digest(dataset, cache_file: Path | None = None) -> str:
    """A content hash of the split's files (ids and SHA-256 of each file's bytes, in path order), 16
    hex digits. Each file is read once: its hash is kept in ``cache_file`` (default
    ``<cache>/file_digests.json``) against its size and modification time. A split without files
    (a stand-in built in memory) hashes its ids."""
    from vmbench.data.common import cache_dir

    files = dataset_files(dataset)
    total = hashlib.sha256("\n".join(map(str, dataset.ids)).encode())
    if files:
        cache_file = cache_file or cache_dir() / "file_digests.json"
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        before = dict(cache)
        for path in files:
            total.update(_file_digest(path, cache).encode())
        if cache != before:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_file, json.dumps(cache))
    return total.hexdigest()[:16]


def _source(dataset) -> str:
    files = dataset_files(dataset)
    return os.path.commonpath([str(p) for p in files]) if files else f"vmbench:{dataset.name}"


def describe_run(cfg: ExperimentConfig, stage: str, *, outcome: str, sweep: str | None = None,
                 searched: dict | None = None) -> str:
    """The run's description for the MLflow UI (markdown): what was trained on what, how, and how it ended."""
    fold = getattr(cfg.data, "fold", None)
    where = f"fold {fold} of {cfg.data.folds}, " if fold is not None else ""
    stage_text = {T.STAGE_SEARCH: "search trial", T.STAGE_FINAL: "final retraining of the best configuration",
                  T.STAGE_SINGLE: "single `vmbench train` run (not tuned)"}.get(stage, stage)
    lines = [f"**{cfg.model.name}** on **{cfg.data.name}**, protocol {cfg.data.protocol}: {stage_text}"
             + (f" of sweep `{sweep}`" if sweep else "") + f" ({where}seed {cfg.train.seed}).",
             f"Trained up to {cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''}."]
    if searched:
        lines.append("Searched values: " + ", ".join(f"`{k}` = {v}" for k, v in sorted(searched.items())) + ".")
    lines.append(f"Outcome: {outcome}")
    return "\n\n".join(lines)


def _test_outcome(cfg: ExperimentConfig, result) -> str:
    headline = vmbench.dataset_info(cfg.data.name).kind.headline  # what `vmbench train` prints, not the counts
    scores = ", ".join(f"{k} {result.test[k]:.4f}" for k in headline if k in result.test)
    return (f"test {scores} (best epoch {result.best_epoch} by {result.select_metric} "
            f"{result.best_value:.4f}{'; validation = test' if result.val_is_test else ''}).")


def _log_datasets(run: T.TrialRun, cfg: ExperimentConfig, result) -> None:
    """The train and test splits as dataset inputs (the train split is listed again: no image is read)."""
    from vmbench.data import dataset_for

    train = dataset_for(cfg, "train", img_size=result.img_size)
    for split, data in (("train", train), ("test", result.test_data)):
        run.log_dataset(f"{cfg.data.name}-{cfg.data.protocol}-{split}", dataset_digest(data), _source(data), split,
                        rows=len(data.ids))


def record_test_results(run: T.TrialRun, cfg: ExperimentConfig, result, device, gpu: float = 0.0, *,
                        stage: str = T.STAGE_SINGLE, sweep: str | None = None,
                        searched: dict | None = None) -> dict[str, str]:
    """Log a finished ``fit``'s test metrics, costs and artifacts (from what ``fit`` kept in memory:
    the selected model, its test split and evaluation), its datasets, logged model and
    description; returns the tags to finish the run with."""
    if result.model is None:
        raise ValueError("record_test_results needs a fit run with evaluate_test=True")
    costs = run_costs(result.model, cfg, result.img_size, result, gpu, device)
    test = {f"test_{k}": v for k, v in result.test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run.log_metrics(costs)
    _log_datasets(run, cfg, result)
    run.log_model(f"{cfg.model.name}-{cfg.data.name}-seed{cfg.train.seed}", result.best_checkpoint,
                  {**test, f"best_{result.select_metric}": result.best_value}, cfg.flat(),
                  {T.TAG_MODEL: cfg.model.name, T.TAG_DATASET: cfg.data.name, T.TAG_STAGE: stage})
    eval_dir = result.run_dir.eval_dir("test")
    artifact_dir = str(Path(T.PER_CASE_ARTIFACT).parent)
    run.log_file(eval_dir / Path(T.PER_CASE_ARTIFACT).name, artifact_dir)
    run.log_file(eval_dir / "summary.json", artifact_dir)
    run.log_file(result.best_checkpoint, "checkpoints")
    log_overlays(run, result.model, result.test_data, result.img_size, device, TEST_OVERLAYS)
    run.describe(describe_run(cfg, stage, outcome=_test_outcome(cfg, result), sweep=sweep, searched=searched))
    # Headline metrics that are NaN rank nothing: the run is a failure, not a row without numbers.
    undefined = [k for k in vmbench.dataset_info(cfg.data.name).kind.headline
                 if k in result.test and not float(result.test[k]) == float(result.test[k])]
    if undefined:
        return {T.TAG_OUTCOME: T.FAILED, T.TAG_VAL_IS_TEST: str(result.val_is_test).lower(),
                T.TAG_ERROR: f"headline test metric(s) {', '.join(undefined)} are NaN"}
    return {T.TAG_OUTCOME: T.COMPLETED, T.TAG_VAL_IS_TEST: str(result.val_is_test).lower()}


def write_run_pointer(run_dir: RunDir, tracking_uri: str, experiment_id: str, run_id: str, key: str) -> Path:
    """The run folder's ``mlflow_run.json``: the MLflow run this folder's training belongs to."""
    payload = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "run_id": run_id, "key": key}
    return atomic_write(run_dir.pointer, json.dumps(payload, indent=2) + "\n")


def read_run_pointer(run_dir: RunDir) -> dict[str, str] | None:
    """The folder's ``mlflow_run.json``, or None when the training was not tracked."""
    path = run_dir.pointer
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable run pointer ({err}); delete it to track a new run") from None
    if not isinstance(payload, dict) or not {"tracking_uri", "experiment_id", "run_id", "key"} <= set(payload):
        raise DataError(f"{path}: expected keys tracking_uri, experiment_id, run_id and key; delete it to track a new run")
    return payload
