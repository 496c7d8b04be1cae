"""Checkpoints: the typed :class:`TrainState`, reading it back, and models rebuilt from it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

import vmbench
from vmbench.checkpoints import read_checkpoint
from vmbench.config import ExperimentConfig
from vmbench.engine.builders import build_model
from vmbench.errors import CheckpointError, few

log = logging.getLogger("vmbench.engine")

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainState",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "model_from_checkpoint",
    "preprocess_record",
]

CHECKPOINT_FORMAT = 1


def preprocess_record(dataset, evaluation: str) -> dict[str, Any]:
    """What ``vmbench predict`` needs to prepare a new input the way the test split was."""
    if evaluation == "volume":
        return {"kind": "volume"}
    transform = dataset.transform
    return {
        "kind": "image",
        "normalize": transform.normalize,
        "stats": list(transform.stats) if transform.stats is not None else None,
    }


@dataclass
class TrainState:
    """What ``last.pt`` and ``best.pt`` hold; the file is :meth:`to_dict` (plain tensors and lists,
    readable with ``torch.load(weights_only=True)``). ``best.pt`` has no optimiser, scheduler or
    scaler state."""

    config: dict[str, Any]  # ExperimentConfig.to_dict()
    epoch: int  # epochs completed
    img_size: tuple[int, int]
    preprocess: dict[str, Any]  # how the test split prepared its inputs (vmbench predict repeats it)
    model: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_value: float
    best_epoch: int
    select_metric: str
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    format: int = CHECKPOINT_FORMAT
    vmbench_version: str = ""

    _REQUIRED = ("config", "epoch", "img_size", "model")

    @property
    def model_name(self) -> str:
        """The registered model the weights were written for."""
        return str(self.config.get("model", {}).get("name", "?"))

    def to_dict(self, with_optimizer: bool = True) -> dict[str, Any]:
        state = {
            "format": self.format,
            "vmbench_version": self.vmbench_version or vmbench.__version__,
            "config": self.config,
            "img_size": list(self.img_size),
            "preprocess": self.preprocess,
            "epoch": self.epoch,
            "model": self.model,
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "select_metric": self.select_metric,
        }
        if with_optimizer:
            state.update(optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler)
        return state

    @classmethod
    def from_dict(cls, values: Any, source: str = "checkpoint") -> "TrainState":
        if not isinstance(values, dict) or any(k not in values for k in cls._REQUIRED):
            have = sorted(values)[:8] if isinstance(values, dict) else type(values).__name__
            raise CheckpointError(
                f"{source} is not a vmbench training checkpoint (expected keys {', '.join(cls._REQUIRED)}; found {have})"
            )
        config = values["config"]
        # Malformed fields are one line naming the file, not a KeyError deep in evaluate or predict.
        sections = ("model", "data")
        if not isinstance(config, dict) or any(not isinstance(config.get(k), dict)
                                               or not isinstance(config[k].get("name"), str) for k in sections):
            raise CheckpointError(f"{source}: its 'config' is malformed (expected the sections model and data, each "
                                  "with a name); was the file edited or written by something else than vmbench?")
        try:
            epoch = int(values["epoch"])
            img_size = tuple(int(v) for v in values["img_size"])
        except (TypeError, ValueError):
            raise CheckpointError(f"{source}: its 'epoch' or 'img_size' is malformed ({values['epoch']!r}, "
                                  f"{values['img_size']!r}); was the file edited?") from None
        return cls(
            config=config,
            epoch=epoch,
            img_size=img_size,
            preprocess=values.get("preprocess") or {},
            model=values["model"],
            history=list(values.get("history") or []),
            best_value=float(values.get("best_value", math.nan)),
            best_epoch=int(values.get("best_epoch", 0)),
            select_metric=str(values.get("select_metric", "")),
            optimizer=values.get("optimizer"),
            scheduler=values.get("scheduler"),
            scaler=values.get("scaler"),
            format=int(values.get("format", CHECKPOINT_FORMAT)),
            vmbench_version=str(values.get("vmbench_version", "")),
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict stored in a vmbench checkpoint (``weights_only=True``); :func:`load_state` types it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    ckpt = read_checkpoint(path, map_location)  # weights_only=True; clear CheckpointFormatError otherwise
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is not a vmbench checkpoint (expected keys 'model' and 'config'); "
            "give a best.pt or last.pt written by vmbench train"
        )
    return ckpt


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> TrainState:
    """The :class:`TrainState` in a vmbench checkpoint file (``weights_only=True``)."""
    return TrainState.from_dict(load_checkpoint(path, map_location), source=str(path))


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: str | Path,
                 written_for: str) -> None:
    """``load_state_dict(strict=True)``, or one line naming the file and what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[:1]
        raise CheckpointError(
            f"{source}: the weights written for model {written_for!r} do not fit the {type(model).__name__} "
            f"built from its configuration: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mismatched keys (e.g. {few(first)}); was the file edited or written by "
            "another version of the model?"
        )
    bad = next((k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # NaN or infinite weights score DSC 0 without a word: a diverged or damaged file
        raise CheckpointError(f"{source}: weight {bad!r} holds NaN or infinite values (a diverged training or a "
                              "damaged file); use another checkpoint")
    model.load_state_dict(weights, strict=True)


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, its ExperimentConfig, the :class:`TrainState`).

    The model is built bare: its weights come from the checkpoint, never from the pretrained
    files its configuration names (which need not exist where the checkpoint is used).
    """
    state = load_state(path)
    cfg = ExperimentConfig.from_dict(state.config, source=str(path))
    info = vmbench.dataset_info(cfg.data.name)
    model = build_model(cfg, info.num_classes, state.img_size, load_pretrained=False)
    load_weights(model, state.model, path, state.model_name)
    return model.to(device).eval(), cfg, state
