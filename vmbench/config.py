"""Typed experiment configuration: one object from YAML/CLI to trial, MLflow params and tables.

``ExperimentConfig.from_dict`` validates a nested mapping (unknown keys, wrong types, bad choices
and values out of range raise :class:`ConfigError` naming the dotted key), ``to_dict`` /
``flat()`` give it back for checkpoints and tracking, and ``with_overrides({"optim.lr": 3e-4})``
applies dotted keys (what a sweep samples). The section validator (:func:`build_section` and the
``check_*`` functions) also checks the search-space file's sections (:mod:`vmbench.search_space`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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
    "build_section",
    "check_bound",
    "check_choice",
    "check_keys",
    "check_mapping",
    "check_value",
    "config_error",
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
    # Where 2D test predictions are scored: auto (training size under protocol paper, as published;
    # each image's own size otherwise), native or training. Validation always uses the training size.
    eval_resolution: str = "auto"

    _choices = {"protocol": RUN_PROTOCOLS, "eval_resolution": ("auto", "native", "training")}
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
        if "format" in self.options:
            # A declared dataset (vmbench.data.user): registered wherever the configuration is built,
            # Ray workers included, so every later dataset_info(name) finds it.
            from vmbench.registry import declare_dataset

            declare_dataset(self.name, self.root, self.options)


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


# ------------------------------------------------------------------------------------------------
# The validator of configuration sections: this file's and the search-space file's
# (vmbench.search_space). Every error is one line, ``SOURCE: KEY: what is wrong``.
#
# A section is a dataclass; besides its typed fields it may declare ``_choices`` (field -> allowed
# values), ``_minimums`` (field -> inclusive lower bound), ``_positive`` (fields that must be > 0)
# and ``_check_together(prefix, source)`` for rules across fields.


def config_error(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}")


def check_value(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Validate (and lightly coerce: int -> float, numeric text -> float, list -> tuple) ``value``
    against ``annotation``."""
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
                return check_value(value, option, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: {key}: got {value!r}, expected {annotation}")
    if annotation is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise config_error(source, key, f"expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
            if not isinstance(value, (list, tuple)):
                raise config_error(source, key, f"expected a list, got {value!r}")
            return tuple(check_value(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise config_error(source, key, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(check_value(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        # bool("false") is True: only YAML's true/false may switch a flag.
        if not isinstance(value, bool):
            raise config_error(source, key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise config_error(source, key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as text, and --set values go through it
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise config_error(source, key, f"expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf, --set key=nan: no setting means them
            raise config_error(source, key, f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise config_error(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def check_mapping(value: Any, key: str, source: str) -> dict[str, Any]:
    """A section's mapping; an absent (None) section is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise config_error(source, key, f"expected a mapping, got {type(value).__name__}")
    return value


def check_keys(values: dict[str, Any], known: Sequence[str], prefix: str, source: str) -> None:
    """Refuse the first key of ``values`` not in ``known`` (``prefix``: the section's dotted path, or "")."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise config_error(source, f"{prefix}.{unknown[0]}" if prefix else unknown[0],
                           f"unknown key (known: {', '.join(known)})")


def check_choice(value: Any, allowed: Sequence[Any], key: str, source: str) -> Any:
    if value not in allowed:
        raise config_error(source, key, f"{value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


def check_bound(value: Any, low: float, op: str, key: str, source: str) -> Any:
    """``value >= low`` (op ">=") or ``value > low`` (op ">"); None (unset) passes, and a pair such
    as ``img_size`` is checked element by element."""
    values = value if isinstance(value, tuple) else () if value is None else (value,)
    if any(v < low if op == ">=" else v <= low for v in values):
        raise config_error(source, key, f"{value!r} is out of range (must be {op} {low})")
    return value


def build_section(cls: type, values: Any, prefix: str, source: str):
    """An instance of the section dataclass ``cls`` from ``values``, checked (see above)."""
    values = check_mapping(values, prefix, source)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    check_keys(values, names, prefix, source)
    obj = cls(**{name: check_value(values[name], hints[name], f"{prefix}.{name}", source)
                 for name in names if name in values})
    for name, allowed in getattr(cls, "_choices", {}).items():
        check_choice(getattr(obj, name), allowed, f"{prefix}.{name}", source)
    for name, low in getattr(cls, "_minimums", {}).items():
        check_bound(getattr(obj, name), low, ">=", f"{prefix}.{name}", source)
    for name in getattr(cls, "_positive", ()):
        check_bound(getattr(obj, name), 0, ">", f"{prefix}.{name}", source)
    if hasattr(obj, "_check_together"):
        obj._check_together(prefix, source)
    return obj


# The top-level key of a --config file that names the run folder (not part of the configuration).
RUN_FOLDER_KEY = "out_dir"


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "ExperimentConfig":
        """The typed configuration of ``values``. A top-level ``out_dir`` is allowed and not kept:
        where a run is written is not part of the experiment (``vmbench train`` reads it from a
        ``--config`` file as the default ``--out``; older checkpoints recorded it)."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(values).__name__}")
        unknown = sorted(set(values) - set(_SECTIONS) - {RUN_FOLDER_KEY})
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join([*_SECTIONS, RUN_FOLDER_KEY])})")
        check_value(values.get(RUN_FOLDER_KEY, ""), str, RUN_FOLDER_KEY, source)
        return cls(**{name: build_section(c, values.get(name), name, source) for name, c in _SECTIONS.items()})

    def to_dict(self) -> dict[str, Any]:
        result = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            result[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
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
