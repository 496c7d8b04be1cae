"""``fit``: training, in named stages, one model or several in step.

``set_up`` builds data, model, optimiser and schedule into a :class:`Training`; ``resume_from``
restores it from ``last.pt``; each epoch runs ``train_one_epoch``, ``validate``, ``select_best``
and ``save_state`` (``last.pt`` every epoch, ``best.pt`` when the selection metric improves);
``finish`` puts the selected weights back into the model and evaluates it on the test split.
``fit_all`` runs several trainings epoch by epoch (a cross-validated search trial trains every
fold in step) and calls ``on_epoch`` after each; ``fit`` is its one-training case. Every epoch
reseeds all generators from (seed, epoch), so a run resumed from ``last.pt`` follows exactly the
same trajectory as an uninterrupted one. Where files go is the :class:`RunDir`'s business.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

import vmbench
from vmbench.config import ExperimentConfig
from vmbench.data import dataset_for
from vmbench.engine.batches import iterate, progress_bar, target_tensor
from vmbench.engine.builders import (
    LAST,
    autocast_dtype,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    epoch_seed,
    image_size,
    resolve_device,
    seed_everything,
    selection_rule,
)
from vmbench.engine.evaluation import NATIVE_SIZE, EvalResult, eval_resolution, evaluate, evaluate_into
from vmbench.engine.outputs import as_float, supervised_loss
from vmbench.rundir import RunDir
from vmbench.engine.state import TrainState, load_state, load_weights, preprocess_record
from vmbench.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from vmbench.io import atomic_torch_save
from vmbench.protocols import PAPER

log = logging.getLogger("vmbench.engine")

__all__ = ["Callback", "EpochDraws", "EpochResult", "EpochStep", "FitResult", "Training", "TrainingData", "fit", "fit_all"]


@dataclass
class EpochResult:
    epoch: int  # 1-based: epochs completed
    metrics: dict[str, float]
    last_checkpoint: Path
    best_checkpoint: Path | None
    is_best: bool


class Callback(Protocol):
    def __call__(self, result: EpochResult) -> None: ...


@dataclass
class FitResult:
    """A finished training: where its files are, how it was selected, and (after the test
    evaluation) the selected model and its test results, kept in memory for whoever records them."""

    run_dir: RunDir
    best_epoch: int
    best_value: float
    select_metric: str
    select_mode: str
    protocol: str
    img_size: tuple[int, int]
    val_is_test: bool
    history: list[dict[str, float]] = field(default_factory=list)
    model: torch.nn.Module | None = None  # the selected (best.pt) weights, when the test was evaluated
    test_data: Any | None = None  # the test split the model was evaluated on
    val_data: Any | None = None  # the validation split it was selected on (None: the protocol has none)
    evaluation: EvalResult | None = None  # per case and summary on the test split

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir.best

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir.last

    @property
    def test(self) -> dict[str, Any] | None:
        return None if self.evaluation is None else self.evaluation.summary


@dataclass
class TrainingData:
    train: Any  # torch Dataset
    val: Any | None  # None: no validation split (Synapse under protocol paper)
    test: Any
    preprocess: dict[str, Any]  # how the test split prepares inputs (recorded for vmbench predict)
    val_is_test: bool


@dataclass
class Training:
    """One model's training in progress: the built objects the stages of :func:`fit` share and the
    progress so far."""

    cfg: ExperimentConfig
    run_dir: RunDir
    device: torch.device
    task: str  # "binary" or "multiclass"
    img_size: tuple[int, int]
    data: TrainingData
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an LR scheduler or None
    schedule_unit: str  # "epoch" or "step"
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    drop_last: bool
    steps_per_epoch: int
    select_metric: str
    select_mode: str
    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float = math.nan
    best_epoch: int = 0


# ------------------------------------------------------------------------------------------------
# Set-up and resume


def load_data(cfg: ExperimentConfig, evaluation: str, img_size: tuple[int, int]) -> TrainingData:
    train = dataset_for(cfg, "train", img_size=img_size)
    try:
        val = dataset_for(cfg, "val", img_size=img_size)
    except DataError as err:
        if cfg.data.protocol != PAPER:
            raise
        log.info("no validation split: %s", err)
        val = None
    # Built now so that missing test data fails before training; finish() evaluates on it.
    test = dataset_for(cfg, "test", img_size=img_size)
    return TrainingData(train, val, test, preprocess_record(test, evaluation), bool(getattr(val, "val_is_test", False)))


def batch_plan(n_samples: int, batch_size: int, iterations_per_epoch: int | None = None) -> tuple[bool, int]:
    """(drop_last, steps per epoch): one pass over the samples, or ``iterations_per_epoch`` full batches."""
    if iterations_per_epoch is not None:
        return False, iterations_per_epoch
    # A last batch of one sample breaks BatchNorm in training mode (UNet baselines): drop it.
    drop_last = n_samples % batch_size == 1 and n_samples > batch_size
    return drop_last, n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)


def set_up(cfg: ExperimentConfig, run_dir: RunDir) -> Training:
    """Device, data, selection rule, model, loss, optimiser and schedule (in this order: the
    random draws of data splits and weight initialisation follow from ``train.seed``)."""
    device = resolve_device(cfg.train.device)
    amp_dtype = autocast_dtype(cfg, device)
    run_dir.make()
    info = vmbench.dataset_info(cfg.data.name)
    img_size = image_size(cfg, info)
    seed_everything(cfg.train.seed)
    data = load_data(cfg, info.evaluation, img_size)
    metric, mode = selection_rule(cfg, data.val_is_test, data.val is not None, info.evaluation)
    model = build_model(cfg, info.num_classes, img_size).to(device)
    optimizer = build_optimizer(cfg, model)
    drop_last, steps_per_epoch = batch_plan(len(data.train), cfg.train.batch_size, cfg.train.iterations_per_epoch)
    scheduler, schedule_unit = build_scheduler(cfg, optimizer, steps_per_epoch)
    return Training(
        cfg=cfg, run_dir=run_dir, device=device, task=info.task, img_size=img_size, data=data, model=model,
        loss_fn=build_loss(cfg, info.task, info.num_classes), optimizer=optimizer, scheduler=scheduler,
        schedule_unit=schedule_unit, scaler=torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16"),
        amp_dtype=amp_dtype, drop_last=drop_last, steps_per_epoch=steps_per_epoch, select_metric=metric,
        select_mode=mode, best_value=math.inf if mode == "min" else -math.inf,
    )  # fmt: skip


# Where and how a run is shown, not the trajectory it follows: these may change on resume.
_NOT_TRAJECTORY = ("train.progress", "data.num_workers")


def config_changes(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """``dotted.key: old -> new`` for every key that changes the training trajectory."""
    before, after = old.flat(), new.flat()

    def shown(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    keys = sorted((set(before) | set(after)) - set(_NOT_TRAJECTORY))
    changed = [k for k in keys if k not in before or k not in after or before[k] != after[k]]
    return [f"{k}: {shown(before, k)} -> {shown(after, k)}" for k in changed]


def resume_from(training: Training, path: Path) -> None:
    """Continue from a ``last.pt`` written by the same configuration."""
    state = load_state(path)
    changes = config_changes(ExperimentConfig.from_dict(state.config, source=str(path)), training.cfg)
    if changes:
        raise ConfigError(
            f"cannot resume from {path}: it was written with a different configuration ({'; '.join(changes)}); "
            "restore those values or train into a new --out folder"
        )
    if state.optimizer is None:
        raise CheckpointError(f"cannot resume from {path}: it holds no optimiser state (is it a best.pt?)")
    load_weights(training.model, state.model, path, state.model_name)
    training.optimizer.load_state_dict(state.optimizer)
    if training.scheduler is not None and state.scheduler is not None:
        training.scheduler.load_state_dict(state.scheduler)
    if state.scaler is not None:
        training.scaler.load_state_dict(state.scaler)
    training.epoch, training.history = state.epoch, list(state.history)
    training.best_value, training.best_epoch = state.best_value, state.best_epoch
    log.info("resumed from %s at epoch %d", path, training.epoch)


# ------------------------------------------------------------------------------------------------
# One epoch


class EpochDraws(Dataset):
    """``train.iterations_per_epoch``: the epoch's samples drawn with replacement, as nnU-Net's data
    loader draws each batch (MIC-DKFZ/nnUNet@0e495086, ``nnUNetDataLoader``: an infinite
    batchgenerators ``DataLoader``, ``np.random.choice(..., replace=True)``).

    ``indices`` is a function of (seed, epoch). Draw ``k`` of epoch ``e`` is augmented as epoch
    ``(e << 32) | k`` of the dataset (its ``set_epoch``, called in the process that loads the item):
    every draw, repeats of one image included, gets its own augmentation, and the epoch stays a
    function of (seed, epoch) whatever the number of workers.
    """

    def __init__(self, dataset: Any, indices: list[int], epoch: int):
        self.dataset, self.indices, self.epoch = dataset, indices, epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, draw: int) -> Any:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch((self.epoch << 32) | draw)
        return self.dataset[self.indices[draw]]


def epoch_loader(training: Training, epoch: int) -> DataLoader:
    """The epoch's shuffled batches (or ``train.iterations_per_epoch`` batches drawn with
    replacement), every generator reseeded from (seed, epoch)."""
    seed = epoch_seed(training.cfg.train.seed, epoch)
    seed_everything(seed)
    if hasattr(training.data.train, "set_epoch"):
        training.data.train.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed)
    dataset, shuffle = training.data.train, True
    iterations = training.cfg.train.iterations_per_epoch
    if iterations is not None:
        draws = iterations * training.cfg.train.batch_size
        indices = torch.randint(len(dataset), (draws,), generator=generator).tolist()
        dataset, shuffle = EpochDraws(dataset, indices, epoch), False
    return DataLoader(
        dataset,
        batch_size=training.cfg.train.batch_size,
        shuffle=shuffle,
        drop_last=training.drop_last,
        num_workers=training.cfg.data.num_workers,
        generator=generator,
        pin_memory=training.device.type == "cuda",
        persistent_workers=False,
    )


def training_step(training: Training, batch: dict[str, Any], epoch: int, step: int) -> float:
    """Forward, loss, backward and optimiser step on one batch; returns the loss."""
    cfg, device = training.cfg, training.device
    images = batch["image"].to(device, non_blocking=True)
    target = target_tensor(batch, training.task, device)
    with torch.autocast(device_type=device.type, dtype=training.amp_dtype, enabled=training.amp_dtype is not None):
        output = training.model(images)
    loss = supervised_loss(training.loss_fn, as_float(output), target, training.model)
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
            f"(model {cfg.model.name}, lr {cfg.optim.lr:g}); lower optim.lr or set train.grad_clip"
        )
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    if cfg.train.grad_clip:
        training.scaler.unscale_(training.optimizer)
        torch.nn.utils.clip_grad_norm_(training.model.parameters(), cfg.train.grad_clip)
    training.scaler.step(training.optimizer)
    training.scaler.update()
    if training.scheduler is not None and training.schedule_unit == "step":
        training.scheduler.step()
    return loss.item()


def train_one_epoch(training: Training, epoch: int) -> dict[str, float]:
    """``train_loss`` (mean over samples), the epoch's ``lr`` and ``train_images_per_s`` (training
    samples per second of this loop: data loading and optimiser steps, not validation)."""
    loader = epoch_loader(training, epoch)
    training.model.train()
    loss_sum, n_seen = 0.0, 0
    started = time.perf_counter()
    desc = f"epoch {epoch + 1}/{training.cfg.train.epochs}"
    bar = progress_bar(iterate(loader), training.steps_per_epoch, desc, training.cfg.train.progress)
    for step, batch in enumerate(bar):
        loss = training_step(training, batch, epoch, step)
        loss_sum += loss * batch["image"].shape[0]
        n_seen += batch["image"].shape[0]
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss:.4f}")
    if training.device.type == "cuda":  # kernels are asynchronous: count the time they take, not their launch
        torch.cuda.synchronize(training.device)
    metrics = {"train_loss": loss_sum / max(n_seen, 1), "lr": training.optimizer.param_groups[0]["lr"],
               "train_images_per_s": n_seen / max(time.perf_counter() - started, 1e-9)}
    if training.scheduler is not None and training.schedule_unit == "epoch":
        training.scheduler.step()
    return metrics


def validate(training: Training, epoch: int) -> dict[str, float]:
    """``val_*`` metrics every ``train.val_interval`` epochs and after the last; {} otherwise."""
    done, train = epoch + 1, training.cfg.train
    if training.data.val is None or (done % train.val_interval and done != train.epochs):
        return {}
    result = evaluate(training.model, training.data.val, training.device, training.img_size, loss_fn=training.loss_fn, with_hd95=False)
    return {f"val_{k}": v for k, v in result.summary.items() if isinstance(v, (int, float))}


def select_best(training: Training, metrics: dict[str, float]) -> bool:
    """Whether this epoch improves the selection metric (then it becomes the best); under
    ``train.select_metric: last`` every epoch does (its value is the epoch)."""
    value = training.epoch if training.select_metric == LAST else metrics.get(training.select_metric)
    if value is None or not (value < training.best_value if training.select_mode == "min" else value > training.best_value):
        return False
    training.best_value, training.best_epoch = float(value), training.epoch
    return True


def save_state(training: Training, is_best: bool) -> None:
    """``last.pt`` (with optimiser, schedule and scaler state) and, when best, ``best.pt``."""
    state = TrainState(
        config=training.cfg.to_dict(), epoch=training.epoch, img_size=training.img_size, preprocess=training.data.preprocess,
        model=training.model.state_dict(), history=training.history, best_value=training.best_value,
        best_epoch=training.best_epoch, select_metric=training.select_metric, optimizer=training.optimizer.state_dict(),
        scheduler=training.scheduler.state_dict() if training.scheduler is not None else None,
        scaler=training.scaler.state_dict(), vmbench_version=vmbench.__version__,
    )  # fmt: skip
    atomic_torch_save(state.to_dict(), training.run_dir.last)
    if is_best:
        atomic_torch_save(state.to_dict(with_optimizer=False), training.run_dir.best)


def run_epoch(training: Training, epoch: int) -> EpochResult:
    """Train, validate, select and checkpoint epoch ``epoch`` (0-based)."""
    started = time.perf_counter()
    metrics = train_one_epoch(training, epoch)
    metrics.update(validate(training, epoch))
    metrics["epoch_time_s"] = time.perf_counter() - started
    training.epoch = epoch + 1
    is_best = select_best(training, metrics)
    training.history.append({"epoch": training.epoch, **metrics})
    save_state(training, is_best)
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    log.info("epoch %d/%d %s", training.epoch, training.cfg.train.epochs, shown)
    best = training.run_dir.best if training.run_dir.best.exists() else None
    return EpochResult(training.epoch, metrics, training.run_dir.last, best, is_best)


# ------------------------------------------------------------------------------------------------
# The whole training


def finish(training: Training, evaluate_test: bool) -> FitResult:
    """The result; with ``evaluate_test``, the selected weights are loaded back into the model and
    scored on the test split (``eval/test/`` of the run folder)."""
    run_dir = training.run_dir
    if not run_dir.best.exists():  # every value of the selection metric was NaN
        raise ConfigError(
            f"train.select_metric: no epoch produced a usable value of {training.select_metric!r} (see the history in "
            f"{run_dir.last}); nothing to select in {run_dir}"
        )
    cfg = training.cfg
    result = FitResult(run_dir, training.best_epoch, training.best_value, training.select_metric, training.select_mode,
                       cfg.data.protocol, training.img_size, training.data.val_is_test, training.history)  # fmt: skip
    if evaluate_test:
        best = load_state(run_dir.best)
        load_weights(training.model, best.model, run_dir.best, best.model_name)
        test = training.data.test
        evaluation = evaluate_into(training.model, test, cfg, run_dir, "test", run_dir.best, best.epoch,
                                   training.img_size, training.device, native=eval_resolution(cfg) == NATIVE_SIZE)
        result.model, result.evaluation = training.model, evaluation
        result.test_data, result.val_data = test, training.data.val
    return result


@dataclass
class EpochStep:
    """One epoch of trainings run in step: the epoch (1-based), each training, and its result."""

    epoch: int
    trainings: list[Training]
    results: list[EpochResult]


def fit_all(jobs: Sequence[tuple[ExperimentConfig, RunDir]], on_epoch: Callable[[EpochStep], Any] | None = None,
            resume: bool = False, evaluate_test: bool = True) -> list[FitResult]:
    """Train every (configuration, run folder) for ``train.epochs`` epochs, in step: epoch ``e`` of
    each, then ``on_epoch(EpochStep)``. With ``resume``, each continues from its ``last.pt`` where
    there is one. Returns their results in order."""
    trainings = [set_up(cfg, run_dir) for cfg, run_dir in jobs]
    if resume:
        for training in trainings:
            if training.run_dir.last.exists():
                resume_from(training, training.run_dir.last)
    epochs = {training.cfg.train.epochs for training in trainings}
    if len(epochs) != 1:
        raise ValueError(f"trainings in step need the same train.epochs, got {sorted(epochs)}")
    for epoch in range(min(training.epoch for training in trainings), epochs.pop()):
        results = []
        for training in trainings:
            if training.epoch > epoch:  # checkpoints taken together cannot disagree; never train an epoch twice
                raise RuntimeError(f"{training.run_dir} is at epoch {training.epoch}, ahead of the others' {epoch}")
            results.append(run_epoch(training, epoch))
        if on_epoch is not None:
            on_epoch(EpochStep(epoch + 1, trainings, results))
    return [finish(training, evaluate_test) for training in trainings]


def fit(cfg: ExperimentConfig, run_dir: RunDir | str | Path, callbacks: Iterable[Callable[[EpochResult], Any]] = (),
        resume: bool = False, evaluate_test: bool = True) -> FitResult:
    """Train one model into ``run_dir``: checkpoint every epoch, select ``best.pt``, evaluate it on
    the test split; each callback gets every epoch's :class:`EpochResult`."""
    callbacks = list(callbacks)

    def each_epoch(step: EpochStep) -> None:
        for callback in callbacks:
            callback(step.results[0])

    return fit_all([(cfg, RunDir(run_dir))], each_epoch, resume, evaluate_test)[0]
