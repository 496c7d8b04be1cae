"""Typed experiment configuration: one object from YAML/CLI to trial, MLflow params and tables.

``ExperimentConfig.from_dict`` validates a nested mapping (unknown keys, wrong types, bad choices
and values out of range raise :class:`ConfigError` naming the dotted key), ``to_dict`` /
``flat()`` give it back for checkpoints and tracking, and ``with_overrides({"optim.lr": 3e-4})``
applies dotted keys (what a sweep samples).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbench.errors import ConfigError
from vmbench.protocols import CV, HOLDOUT, RUN_PROTOCOLS

__all__ = [
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedulerConfig",
    "TrainConfig",
]


@dataclass
class DataConfig:
    name: str = "synthetic-isic"
    root: str | None = None  # None: the dataset's default (synthetic ones generate into a cache)
    protocol: str = HOLDOUT  # see vmbench.protocols: holdout (val apart from test), paper (the published one)
    img_size: int | tuple[int, int] | None = None  # side or [height, width]; None: the dataset's own
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # extra builder arguments, e.g. normalize, n
    fold: int | None = None  # protocol cv: the fold trained (its val part validates), 0 .. folds - 1
    folds: int = 5  # protocol cv: the number of folds (nnU-Net's default)

    _choices = {"protocol": RUN_PROTOCOLS}
    _minimums = {"img_size": 1, "num_workers": 0, "fold": 0, "folds": 2}

    def _check_together(self, prefix: str, source: str) -> None:
        """Rules across fields: a fold exists under protocol cv only, and always there."""
        if self.protocol == CV and self.fold is None:
            raise ConfigError(f"{source}: {prefix}.fold: protocol 'cv' needs the fold to train (0 .. {self.folds - 1})")
        if self.protocol != CV and self.fold is not None:
            raise ConfigError(f"{source}: {prefix}.fold: only protocol 'cv' has folds (protocol is "
                              f"{self.protocol!r}); remove {prefix}.fold or set {prefix}.protocol: cv")
        if self.fold is not None and self.fold >= self.folds:
            raise ConfigError(f"{source}: {prefix}.fold: {self.fold} is out of range (must be < {prefix}.folds, "
                              f"which is {self.folds})")


@dataclass
class ModelConfig:
    name: str = "vmunet"
    overrides: dict[str, Any] = field(default_factory=dict)  # constructor arguments, e.g. drop_path_rate
    pretrained: str | None = None  # local path of pretrained weights for the model's own loader


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only: Nesterov momentum (nnU-Net's SGD), needs momentum > 0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    eps: float = 1e-8

    _choices = {"name": ("adamw", "adam", "sgd")}
    _minimums = {"weight_decay": 0, "momentum": 0}
    _positive = ("lr", "eps")

    def _check_together(self, prefix: str, source: str) -> None:
        """Nesterov momentum exists for SGD with momentum only (torch.optim.SGD refuses the rest)."""
        if self.nesterov and self.name != "sgd":
            raise ConfigError(f"{source}: {prefix}.nesterov: Nesterov momentum is SGD's ({prefix}.name is "
                              f"{self.name!r}); set {prefix}.name: sgd or {prefix}.nesterov: false")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError(f"{source}: {prefix}.nesterov: needs {prefix}.momentum > 0 (it is {self.momentum!r})")


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine: CosineAnnealingLR stepped per epoch; poly: lr * (1 - t/T)^power
    t_max: int | None = None  # cosine period in epochs; None = all epochs (VM-UNet's ISIC config uses 50)
    eta_min: float = 1e-5
    power: float = 0.9
    # What t counts. auto: cosine per epoch, poly per iteration (TransUNet / Swin-UNet); epoch: poly
    # set at the start of each epoch from the epochs done (nnU-Net's PolyLRScheduler); iteration: poly only.
    step: str = "auto"

    _choices = {"name": ("cosine", "poly", "constant"), "step": ("auto", "iteration", "epoch")}
    _minimums = {"t_max": 1, "eta_min": 0, "power": 0}

    def _check_together(self, prefix: str, source: str) -> None:
        if self.step == "iteration" and self.name != "poly":
            raise ConfigError(f"{source}: {prefix}.step: 'iteration' applies to poly only ({prefix}.name is "
                              f"{self.name!r}, stepped per epoch); set {prefix}.step: auto or epoch")


@dataclass
class LossConfig:
    name: str = "auto"  # auto: bce_dice for binary tasks, ce_dice for multiclass
    bce_weight: float = 1.0
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    include_background: bool = True  # ce_dice: Dice over background too, as the papers
    # (nnunet_dice_ce leaves background out and nnunet_dice_bce's region has none, as nnU-Net's trainer)

    _minimums = {"bce_weight": 0, "ce_weight": 0, "dice_weight": 0}


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 32
    # None: an epoch is one pass over the training split; N: N batches drawn with replacement
    # (nnU-Net: 250), a function of (seed, epoch) as every epoch is
    iterations_per_epoch: int | None = None
    seed: int = 42
    device: str = "auto"  # auto: cuda if available, else cpu
    amp: str = "off"  # off | bf16 | fp16 (CUDA only)
    grad_clip: float | None = None  # max gradient norm
    val_interval: int = 1  # epochs between validations
    # Checkpoint selection. auto: holdout -> best validation Dice; paper -> what the paper did
    # (ISIC: lowest loss on the val(=test) split; Synapse: lowest mean training loss); last: the
    # final epoch's weights (nnU-Net's checkpoint_final).
    select_metric: str = "auto"
    select_mode: str = "auto"
    progress: bool = True

    _choices = {"amp": ("off", "bf16", "fp16"), "select_mode": ("auto", "min", "max")}
    _minimums = {"epochs": 1, "batch_size": 1, "iterations_per_epoch": 1, "val_interval": 1}
    _positive = ("grad_clip",)  # None: no clipping


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "scheduler": SchedulerConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}


def _check_type(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Validate (and lightly coerce: int -> float, list -> tuple) ``value`` against ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: {key}: got {value!r}, expected {annotation}")
    if annotation is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{source}: {key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_check_type(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf, --set key=nan: no setting means them
            raise ConfigError(f"{source}: {key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _build_section(cls: type, values: Any, prefix: str, source: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix}.{unknown[0]} (known: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in values:
            kwargs[name] = _check_type(values[name], hints[name], f"{prefix}.{name}", source)
    obj = cls(**kwargs)
    for name, allowed in getattr(cls, "_choices", {}).items():
        if getattr(obj, name) not in allowed:
            raise ConfigError(
                f"{source}: {prefix}.{name}: {getattr(obj, name)!r} is not one of {', '.join(map(repr, allowed))}"
            )
    _check_range(obj, prefix, source)
    if hasattr(obj, "_check_together"):
        obj._check_together(prefix, source)
    return obj


def _check_range(section: Any, prefix: str, source: str) -> None:
    """``_minimums`` (inclusive) and ``_positive`` (> 0) of a section; None (unset) passes, and a
    pair such as ``img_size`` is checked element by element."""
    bounds = [(name, low, ">=") for name, low in getattr(section, "_minimums", {}).items()]
    bounds += [(name, 0, ">") for name in getattr(section, "_positive", ())]
    for name, low, op in bounds:
        value = getattr(section, name)
        values = value if isinstance(value, tuple) else () if value is None else (value,)
        if any(v < low if op == ">=" else v <= low for v in values):
            raise ConfigError(f"{source}: {prefix}.{name}: {value!r} is out of range (must be {op} {low})")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "vmbench-runs/train"

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "ExperimentConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(values).__name__}")
        unknown = sorted(set(values) - set(_SECTIONS) - {"out_dir"})
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join([*_SECTIONS, 'out_dir'])})")
        sections = {name: _build_section(c, values.get(name), name, source) for name, c in _SECTIONS.items()}
        out_dir = _check_type(values.get("out_dir", cls.out_dir), str, "out_dir", source)
        return cls(**sections, out_dir=out_dir)

    def to_dict(self) -> dict[str, Any]:
        result = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            result[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        result["out_dir"] = self.out_dir
        return result

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (model overrides as ``model.overrides.<name>``)."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                flat[prefix] = value

        walk("", self.to_dict())
        return flat

    def with_overrides(self, overrides: dict[str, Any], source: str = "overrides") -> "ExperimentConfig":
        """A copy with dotted keys replaced, e.g. ``{"optim.lr": 3e-4, "model.overrides.depths": [...]}``."""
        values = self.to_dict()
        for dotted, value in overrides.items():
            parts = dotted.split(".")
            if _under_overrides(parts):  # free-form constructor / builder arguments
                node = values[parts[0]][parts[1]]
                for part in parts[2:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = value
                continue
            node = values
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"{source}: unknown key {dotted!r}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"{source}: unknown key {dotted!r}")
            node[parts[-1]] = value
        return ExperimentConfig.from_dict(values, source)


def _under_overrides(parts: list[str]) -> bool:
    return len(parts) >= 3 and (parts[0], parts[1]) in (("model", "overrides"), ("data", "options"))


def _plain(value: Any) -> Any:
    """A JSON/YAML-ready copy (never the config's own mutable objects)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
