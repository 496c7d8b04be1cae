"""``fit``: one trial's training, in named stages.

``set_up`` builds data, model, optimiser and schedule into a :class:`Trial`; ``resume_from``
restores it from ``last.pt``; each epoch runs ``train_one_epoch``, ``validate``, ``select_best``
and ``save_state`` (``last.pt`` every epoch, ``best.pt`` when the selection metric improves) and
calls the callbacks (the sweep reports to Ray Tune from them); ``finish`` evaluates ``best.pt`` on
the test split. Every epoch reseeds all generators from (seed, epoch), so a run resumed from
``last.pt`` follows exactly the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

import vmbench
from vmbench.config import ExperimentConfig
from vmbench.data import build_dataset
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
from vmbench.engine.evaluation import evaluate, evaluate_checkpoint
from vmbench.engine.outputs import as_float, supervised_loss
from vmbench.engine.state import TrainState, load_state, load_weights, preprocess_record
from vmbench.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from vmbench.io import atomic_torch_save
from vmbench.protocols import PAPER

log = logging.getLogger("vmbench.engine")

__all__ = ["Callback", "EpochDraws", "EpochResult", "FitResult", "Trial", "TrialData", "fit"]


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
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_value: float
    select_metric: str
    select_mode: str
    protocol: str
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, Any] | None = None


@dataclass
class TrialData:
    train: Any  # torch Dataset
    val: Any | None  # None: no validation split (Synapse under protocol paper)
    preprocess: dict[str, Any]  # how the test split prepares inputs (recorded for vmbench predict)
    val_is_test: bool


@dataclass
class Trial:
    """What the stages of :func:`fit` share: the built objects and the progress so far."""

    cfg: ExperimentConfig
    device: torch.device
    task: str  # "binary" or "multiclass"
    img_size: tuple[int, int]
    data: TrialData
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

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def last_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "checkpoints" / "best.pt"


# ------------------------------------------------------------------------------------------------
# Set-up and resume


def load_data(cfg: ExperimentConfig, evaluation: str, img_size: tuple[int, int]) -> TrialData:
    kwargs = dict(root=cfg.data.root, protocol=cfg.data.protocol, img_size=img_size, seed=cfg.train.seed,
                  fold=cfg.data.fold, folds=cfg.data.folds, **cfg.data.options)  # fmt: skip
    train = build_dataset(cfg.data.name, split="train", **kwargs)
    try:
        val = build_dataset(cfg.data.name, split="val", **kwargs)
    except DataError as err:
        if cfg.data.protocol != PAPER:
            raise
        log.info("no validation split: %s", err)
        val = None
    # Built now so that missing test data fails before training, and to record its preprocessing.
    test = build_dataset(cfg.data.name, split="test", **kwargs)
    return TrialData(train, val, preprocess_record(test, evaluation), bool(getattr(val, "val_is_test", False)))


def batch_plan(n_samples: int, batch_size: int, iterations_per_epoch: int | None = None) -> tuple[bool, int]:
    """(drop_last, steps per epoch): one pass over the samples, or ``iterations_per_epoch`` full batches."""
    if iterations_per_epoch is not None:
        return False, iterations_per_epoch
    # A last batch of one sample breaks BatchNorm in training mode (UNet baselines): drop it.
    drop_last = n_samples % batch_size == 1 and n_samples > batch_size
    return drop_last, n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)


def set_up(cfg: ExperimentConfig) -> Trial:
    """Device, data, selection rule, model, loss, optimiser and schedule (in this order: the
    random draws of data splits and weight initialisation follow from ``train.seed``)."""
    device = resolve_device(cfg.train.device)
    amp_dtype = autocast_dtype(cfg, device)
    (Path(cfg.out_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
    info = vmbench.dataset_info(cfg.data.name)
    img_size = image_size(cfg, info)
    seed_everything(cfg.train.seed)
    data = load_data(cfg, info.evaluation, img_size)
    metric, mode = selection_rule(cfg, data.val_is_test, data.val is not None, info.evaluation)
    model = build_model(cfg, info.num_classes, img_size).to(device)
    optimizer = build_optimizer(cfg, model)
    drop_last, steps_per_epoch = batch_plan(len(data.train), cfg.train.batch_size, cfg.train.iterations_per_epoch)
    scheduler, schedule_unit = build_scheduler(cfg, optimizer, steps_per_epoch)
    return Trial(
        cfg=cfg, device=device, task=info.task, img_size=img_size, data=data, model=model,
        loss_fn=build_loss(cfg, info.task, info.num_classes), optimizer=optimizer, scheduler=scheduler,
        schedule_unit=schedule_unit, scaler=torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16"),
        amp_dtype=amp_dtype, drop_last=drop_last, steps_per_epoch=steps_per_epoch, select_metric=metric,
        select_mode=mode, best_value=math.inf if mode == "min" else -math.inf,
    )  # fmt: skip


# Where and how a run is shown, not the trajectory it follows: these may change on resume.
_NOT_TRAJECTORY = ("out_dir", "train.progress", "data.num_workers")


def config_changes(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """``dotted.key: old -> new`` for every key that changes the training trajectory."""
    before, after = old.flat(), new.flat()

    def shown(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    keys = sorted((set(before) | set(after)) - set(_NOT_TRAJECTORY))
    changed = [k for k in keys if k not in before or k not in after or before[k] != after[k]]
    return [f"{k}: {shown(before, k)} -> {shown(after, k)}" for k in changed]


def resume_from(trial: Trial, path: Path) -> None:
    """Continue from a ``last.pt`` written by the same configuration."""
    state = load_state(path)
    changes = config_changes(ExperimentConfig.from_dict(state.config, source=str(path)), trial.cfg)
    if changes:
        raise ConfigError(
            f"cannot resume from {path}: it was written with a different configuration ({'; '.join(changes)}); "
            "restore those values or train into a new --out folder"
        )
    if state.optimizer is None:
        raise CheckpointError(f"cannot resume from {path}: it holds no optimiser state (is it a best.pt?)")
    load_weights(trial.model, state.model, path, state.model_name)
    trial.optimizer.load_state_dict(state.optimizer)
    if trial.scheduler is not None and state.scheduler is not None:
        trial.scheduler.load_state_dict(state.scheduler)
    if state.scaler is not None:
        trial.scaler.load_state_dict(state.scaler)
    trial.epoch, trial.history = state.epoch, list(state.history)
    trial.best_value, trial.best_epoch = state.best_value, state.best_epoch
    log.info("resumed from %s at epoch %d", path, trial.epoch)


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


def epoch_loader(trial: Trial, epoch: int) -> DataLoader:
    """The epoch's shuffled batches (or ``train.iterations_per_epoch`` batches drawn with
    replacement), every generator reseeded from (seed, epoch)."""
    seed = epoch_seed(trial.cfg.train.seed, epoch)
    seed_everything(seed)
    if hasattr(trial.data.train, "set_epoch"):
        trial.data.train.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed)
    dataset, shuffle = trial.data.train, True
    iterations = trial.cfg.train.iterations_per_epoch
    if iterations is not None:
        draws = iterations * trial.cfg.train.batch_size
        indices = torch.randint(len(dataset), (draws,), generator=generator).tolist()
        dataset, shuffle = EpochDraws(dataset, indices, epoch), False
    return DataLoader(
        dataset,
        batch_size=trial.cfg.train.batch_size,
        shuffle=shuffle,
        drop_last=trial.drop_last,
        num_workers=trial.cfg.data.num_workers,
        generator=generator,
        pin_memory=trial.device.type == "cuda",
        persistent_workers=False,
    )


def training_step(trial: Trial, batch: dict[str, Any], epoch: int, step: int) -> float:
    """Forward, loss, backward and optimiser step on one batch; returns the loss."""
    cfg, device = trial.cfg, trial.device
    images = batch["image"].to(device, non_blocking=True)
    target = target_tensor(batch, trial.task, device)
    with torch.autocast(device_type=device.type, dtype=trial.amp_dtype, enabled=trial.amp_dtype is not None):
        output = trial.model(images)
    loss = supervised_loss(trial.loss_fn, as_float(output), target, trial.model)
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
            f"(model {cfg.model.name}, lr {cfg.optim.lr:g}); lower optim.lr or set train.grad_clip"
        )
    trial.optimizer.zero_grad(set_to_none=True)
    trial.scaler.scale(loss).backward()
    if cfg.train.grad_clip:
        trial.scaler.unscale_(trial.optimizer)
        torch.nn.utils.clip_grad_norm_(trial.model.parameters(), cfg.train.grad_clip)
    trial.scaler.step(trial.optimizer)
    trial.scaler.update()
    if trial.scheduler is not None and trial.schedule_unit == "step":
        trial.scheduler.step()
    return loss.item()


def train_one_epoch(trial: Trial, epoch: int) -> dict[str, float]:
    """``train_loss`` (mean over samples) and the epoch's ``lr``."""
    loader = epoch_loader(trial, epoch)
    trial.model.train()
    loss_sum, n_seen = 0.0, 0
    desc = f"epoch {epoch + 1}/{trial.cfg.train.epochs}"
    bar = progress_bar(iterate(loader), trial.steps_per_epoch, desc, trial.cfg.train.progress)
    for step, batch in enumerate(bar):
        loss = training_step(trial, batch, epoch, step)
        loss_sum += loss * batch["image"].shape[0]
        n_seen += batch["image"].shape[0]
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss:.4f}")
    metrics = {"train_loss": loss_sum / max(n_seen, 1), "lr": trial.optimizer.param_groups[0]["lr"]}
    if trial.scheduler is not None and trial.schedule_unit == "epoch":
        trial.scheduler.step()
    return metrics


def validate(trial: Trial, epoch: int) -> dict[str, float]:
    """``val_*`` metrics every ``train.val_interval`` epochs and after the last; {} otherwise."""
    done, train = epoch + 1, trial.cfg.train
    if trial.data.val is None or (done % train.val_interval and done != train.epochs):
        return {}
    result = evaluate(trial.model, trial.data.val, trial.device, trial.img_size, loss_fn=trial.loss_fn, with_hd95=False)
    return {f"val_{k}": v for k, v in result.summary.items() if isinstance(v, (int, float))}


def select_best(trial: Trial, metrics: dict[str, float]) -> bool:
    """Whether this epoch improves the selection metric (then it becomes the best); under
    ``train.select_metric: last`` every epoch does (its value is the epoch)."""
    value = trial.epoch if trial.select_metric == LAST else metrics.get(trial.select_metric)
    if value is None or not (value < trial.best_value if trial.select_mode == "min" else value > trial.best_value):
        return False
    trial.best_value, trial.best_epoch = float(value), trial.epoch
    return True


def save_state(trial: Trial, is_best: bool) -> None:
    """``last.pt`` (with optimiser, schedule and scaler state) and, when best, ``best.pt``."""
    state = TrainState(
        config=trial.cfg.to_dict(), epoch=trial.epoch, img_size=trial.img_size, preprocess=trial.data.preprocess,
        model=trial.model.state_dict(), history=trial.history, best_value=trial.best_value,
        best_epoch=trial.best_epoch, select_metric=trial.select_metric, optimizer=trial.optimizer.state_dict(),
        scheduler=trial.scheduler.state_dict() if trial.scheduler is not None else None,
        scaler=trial.scaler.state_dict(), vmbench_version=vmbench.__version__,
    )  # fmt: skip
    atomic_torch_save(state.to_dict(), trial.last_path)
    if is_best:
        atomic_torch_save(state.to_dict(with_optimizer=False), trial.best_path)


def run_epoch(trial: Trial, epoch: int, callbacks: list[Callable[[EpochResult], Any]]) -> None:
    started = time.perf_counter()
    metrics = train_one_epoch(trial, epoch)
    metrics.update(validate(trial, epoch))
    metrics["epoch_time_s"] = time.perf_counter() - started
    trial.epoch = epoch + 1
    is_best = select_best(trial, metrics)
    trial.history.append({"epoch": trial.epoch, **metrics})
    save_state(trial, is_best)
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    log.info("epoch %d/%d %s", trial.epoch, trial.cfg.train.epochs, shown)
    best = trial.best_path if trial.best_path.exists() else None
    for callback in callbacks:
        callback(EpochResult(trial.epoch, metrics, trial.last_path, best, is_best))


# ------------------------------------------------------------------------------------------------
# The whole trial


def finish(trial: Trial, evaluate_test: bool) -> FitResult:
    if not trial.best_path.exists():  # every value of the selection metric was NaN
        raise ConfigError(
            f"train.select_metric: no epoch produced a usable value of {trial.select_metric!r} (see the history in "
            f"{trial.last_path}); nothing to select in {trial.out_dir}"
        )
    cfg = trial.cfg
    result = FitResult(trial.out_dir, trial.best_path, trial.last_path, trial.best_epoch, trial.best_value,
                       trial.select_metric, trial.select_mode, cfg.data.protocol, trial.history)  # fmt: skip
    if evaluate_test:
        out_dir = trial.out_dir / "eval" / "test"
        result.test = evaluate_checkpoint(trial.best_path, split="test", out_dir=out_dir, device=trial.device).summary
    return result


def fit(cfg: ExperimentConfig, callbacks: Iterable[Callable[[EpochResult], Any]] = (), resume: bool = False,
        evaluate_test: bool = True) -> FitResult:
    """Train, checkpoint every epoch, select ``best.pt``, evaluate it on the test split."""
    trial = set_up(cfg)
    if resume and trial.last_path.exists():
        resume_from(trial, trial.last_path)
    callbacks = list(callbacks)
    for epoch in range(trial.epoch, cfg.train.epochs):
        run_epoch(trial, epoch, callbacks)
    return finish(trial, evaluate_test)
