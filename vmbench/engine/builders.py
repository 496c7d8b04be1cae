"""What a trial is built from: device, seeds, selection rule, model, optimiser, schedule, loss."""

from __future__ import annotations

import inspect
import logging
import random
import typing
from typing import Any

import numpy as np
import torch

import vmbench
from vmbench import losses as losses_mod
from vmbench.config import ExperimentConfig
from vmbench.errors import BackendUnavailableError, ConfigError, UnknownNameError
from vmbench.protocols import PAPER, default_select_mode, selectable_metrics

log = logging.getLogger("vmbench.engine")

#: ``train.select_metric`` that keeps the final epoch's weights as best.pt (nnU-Net's checkpoint_final).
LAST = "last"

__all__ = [
    "LAST",
    "autocast_dtype",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "epoch_seed",
    "image_size",
    "resolve_device",
    "seed_everything",
    "selection_rule",
]


def resolve_device(name: str | torch.device, where: str = "train.device") -> torch.device:
    """``auto`` (CUDA when available, else CPU), or the device named; ``where`` names the option."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{where}: {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"{where} is {name!r} but CUDA is not available on this machine (torch {torch.__version__}); "
            "use 'cpu' or 'auto'"
        )
    return device


def autocast_dtype(cfg: ExperimentConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` (None: full precision); mixed precision needs CUDA."""
    if cfg.train.amp == "off":
        return None
    if device.type != "cuda":
        raise ConfigError(
            f"train.amp: {cfg.train.amp!r} needs a CUDA device (running on {device.type}); set it to 'off'"
        )
    return torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch reseeds from (seed, epoch): a resumed run follows the uninterrupted trajectory."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def image_size(cfg: ExperimentConfig, info) -> tuple[int, int]:
    """``data.img_size`` as (height, width); the dataset's own size when unset."""
    size = cfg.data.img_size
    if size is None:
        return tuple(info.img_size)
    return (size, size) if isinstance(size, int) else tuple(size)


def selection_rule(
    cfg: ExperimentConfig, val_is_test: bool, has_val: bool, evaluation: str = "pooled2d"
) -> tuple[str, str]:
    """(metric, mode) that chooses ``best.pt``; ``auto`` follows the protocol (see TrainConfig).

    ``val_is_test``: the validation split is the test split (ISIC under protocol ``paper``, as
    VM-UNet's official ``engine.py`` keeps the checkpoint of lowest loss on it). vmbench reproduces
    that selection and warns here, once per run, that its test numbers are then optimistic.
    """
    metric, mode = cfg.train.select_metric, cfg.train.select_mode
    if metric == LAST:
        if mode != "auto":
            raise ConfigError(f"train.select_mode is {mode!r} but train.select_metric 'last' keeps the final "
                              "epoch whatever the metrics; set train.select_mode: auto")
        return LAST, "max"
    if metric == "auto":
        if cfg.data.protocol == PAPER:
            # VM-UNet: ISIC picks the lowest loss on its val(=test) split; Synapse the lowest train loss.
            metric = "val_loss" if has_val else "train_loss"
        else:
            metric = "val_dsc" if has_val else "train_loss"
    if metric.startswith("val_") and not has_val:
        raise ConfigError(
            f"train.select_metric is {metric!r} but dataset {cfg.data.name!r} has no validation split "
            f"under protocol {cfg.data.protocol!r}; select on train_loss"
        )
    choices = selectable_metrics(evaluation, has_val)
    if metric not in choices:
        raise ConfigError(
            f"train.select_metric is {metric!r}, which a run on {cfg.data.name!r} does not report; "
            f"choose one of {', '.join(choices)} (or {LAST!r}: the final epoch)"
        )
    if mode == "auto":
        mode = default_select_mode(metric)
    if val_is_test and metric.startswith("val_"):
        log.warning(
            "protocol %r on %s: the validation split is the test split, so selecting best.pt on %s makes "
            "its test numbers optimistic (the published protocol; use protocol 'holdout' for a fair one)",
            cfg.data.protocol, cfg.data.name, metric,
        )  # fmt: skip
    return metric, mode


# Constructor arguments that name weight files (TransFuse's resnet_weights / deit_weights): a
# model rebuilt from a checkpoint gets its weights from the checkpoint, never from these files.
def _names_weight_file(key: str) -> bool:
    return key.endswith("_weights") or key == "pretrained"


def _takes_img_size(factory) -> bool:
    """Models with a fixed token grid (TransFuse, Swin-UNet) are built for the training size: their
    factory takes ``img_size``, itself or (through ``**overrides``) the class it is annotated to return."""
    if "img_size" in inspect.signature(factory).parameters:
        return True
    try:
        built = typing.get_type_hints(factory).get("return")
    except NameError:  # an annotation that does not resolve: nothing to learn from it
        return False
    return inspect.isclass(built) and "img_size" in inspect.signature(built).parameters


def build_model(cfg: ExperimentConfig, num_classes: int, img_size: tuple[int, int],
                load_pretrained: bool = True) -> torch.nn.Module:
    """The configured model; ``load_pretrained=False`` builds the bare architecture (the weights
    come from a checkpoint): ``model.pretrained`` and weight-file overrides are ignored."""
    info = vmbench.model_info(cfg.model.name)
    overrides = dict(cfg.model.overrides)
    if not load_pretrained:
        skipped = sorted(k for k in overrides if _names_weight_file(k))
        if skipped:
            log.info("rebuilding %s without the weight files of model.overrides.%s", cfg.model.name, skipped)
        overrides = {k: v for k, v in overrides.items() if not _names_weight_file(k)}
    if _takes_img_size(info.factory):
        overrides.setdefault("img_size", img_size)
    model = vmbench.create_model(cfg.model.name, num_classes=num_classes, in_chans=3, **overrides)
    if load_pretrained and cfg.model.pretrained:
        if info.load_pretrained is None:
            raise ConfigError(
                f"model.pretrained: model {cfg.model.name!r} has no loader for pretrained weights; "
                "remove model.pretrained"
            )
        report = info.load_pretrained(model, cfg.model.pretrained)
        log.info("pretrained weights from %s: %s", cfg.model.pretrained, report)
    return model


def build_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = model.parameters()  # one group, as the official recipes (norms and biases decayed)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)


def build_scheduler(cfg: ExperimentConfig, optimizer, steps_per_epoch: int):
    """(scheduler, step unit): cosine per epoch as VM-UNet; poly per iteration as TransUNet/Swin-UNet,
    or with ``scheduler.step: epoch`` per epoch as nnU-Net's ``PolyLRScheduler`` (MIC-DKFZ/nnUNet@0e495086,
    ``training/lr_scheduler/polylr.py``, stepped in ``on_train_epoch_start``): epoch ``e`` (from 0)
    trains at ``lr * (1 - e / epochs) ** power``."""
    s = cfg.scheduler
    if s.name == "cosine":
        t_max = s.t_max or cfg.train.epochs
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=s.eta_min), "epoch"
    if s.name == "poly" and s.step == "epoch":
        epochs = cfg.train.epochs
        poly = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 - min(e, epochs) / epochs) ** s.power)
        return poly, "epoch"
    if s.name == "poly":
        total = max(1, cfg.train.epochs * steps_per_epoch)
        return (
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 - min(it, total - 1) / total) ** s.power),
            "step",
        )
    return None, "epoch"


def build_loss(cfg: ExperimentConfig, task: str, num_classes: int) -> torch.nn.Module:
    """The loss of ``loss.name`` (``auto``: the papers' loss of the task) with the ``loss:`` keys its
    registration declares (:func:`vmbench.losses.register_loss`); the section's other keys belong
    to other losses and are not passed."""
    name = cfg.loss.name
    if name == "auto":
        name = "bce_dice" if task == "binary" else "ce_dice"
    try:
        info = losses_mod.loss_info(name)
    except UnknownNameError as err:  # the registry's message, close matches included, naming the key
        raise UnknownNameError(f"loss.name: {err}; or auto (the task's default)") from None
    if info.task not in (None, task):
        raise ConfigError(f"loss.name: {name!r} is for {info.task} outputs but dataset {cfg.data.name!r} is {task}; "
                          f"choose auto or one of {', '.join(losses_mod.losses_for(task))}")
    kwargs: dict[str, Any] = {option: getattr(cfg.loss, option) for option in info.options}
    return losses_mod.build_loss(info.name, num_classes, **kwargs)
