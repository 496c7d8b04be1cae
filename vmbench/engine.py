"""One trial: fit, evaluate, checkpoint and resume.

``fit(config)`` trains a registered model on a registered dataset, writes ``last.pt`` every epoch
and ``best.pt`` when the selection metric improves, calls the callbacks with each epoch's metrics
(the sweep reports them to Ray Tune), and finally evaluates ``best.pt`` on the test split.
Every epoch reseeds all generators from (seed, epoch), so a run resumed from ``last.pt`` follows
exactly the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

import vmbench
from vmbench import losses as losses_mod
from vmbench import metrics as metrics_mod
from vmbench.checkpoints import read_checkpoint
from vmbench.config import ExperimentConfig
from vmbench.data import build_dataset
from vmbench.data.errors import DataError
from vmbench.errors import CheckpointError, TrainingDivergedError
from vmbench.protocols import selectable_metrics

log = logging.getLogger("vmbench.engine")

CHECKPOINT_FORMAT = 1


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
class EvalResult:
    rows: list[dict[str, Any]]  # per case (ISIC: per image; Synapse: per case and class)
    summary: dict[str, Any]


# ------------------------------------------------------------------------------------------------
# Set-up helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def selection_rule(
    cfg: ExperimentConfig, val_is_test: bool, has_val: bool, evaluation: str = "pooled2d"
) -> tuple[str, str]:
    """(metric, mode) that chooses best.pt; 'auto' follows the protocol (see TrainConfig)."""
    metric, mode = cfg.train.select_metric, cfg.train.select_mode
    if metric == "auto":
        if cfg.data.protocol == "paper":
            # VM-UNet: ISIC picks the lowest loss on its val(=test) split; Synapse the lowest train loss.
            metric = "val_loss" if has_val else "train_loss"
        else:
            metric = "val_dsc" if has_val else "train_loss"
    if metric.startswith("val_") and not has_val:
        raise ValueError(
            f"train.select_metric is {metric!r} but dataset {cfg.data.name!r} has no validation split "
            f"under protocol {cfg.data.protocol!r}"
        )
    choices = selectable_metrics(evaluation, has_val)
    if metric not in choices:
        raise ValueError(
            f"train.select_metric is {metric!r}, which a run on {cfg.data.name!r} does not report; "
            f"choose one of {', '.join(choices)}"
        )
    if mode == "auto":
        mode = "min" if metric.endswith("loss") or "hd95" in metric else "max"
    return metric, mode


def build_model(cfg: ExperimentConfig, num_classes: int, img_size: tuple[int, int]) -> torch.nn.Module:
    info = vmbench.model_info(cfg.model.name)
    overrides = dict(cfg.model.overrides)
    # Models with a fixed token grid (TransFuse, Swin-UNet) are built for the training size.
    if "img_size" in inspect.signature(info.factory).parameters:
        overrides.setdefault("img_size", img_size)
    model = vmbench.create_model(cfg.model.name, num_classes=num_classes, in_chans=3, **overrides)
    if cfg.model.pretrained:
        report = load_pretrained(model, info.family, cfg.model.pretrained)
        log.info("pretrained weights from %s: %s", cfg.model.pretrained, report)
    return model


def load_pretrained(model: torch.nn.Module, family: str, path: str) -> Any:
    """Each family's own loader for its published pretrained weights (local files only)."""
    if family == "vmunet":
        from vmbench.models.vmunet import load_pretrained_vmamba

        return load_pretrained_vmamba(model, path)
    if family == "swin-unet":
        from baselines.swin_unet import load_swin_pretrained

        return load_swin_pretrained(model, path)
    raise ValueError(f"model.pretrained: no pretrained loader for model family {family!r}")


def build_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = model.parameters()  # one group, as the official recipes (norms and biases decayed)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(cfg: ExperimentConfig, optimizer, steps_per_epoch: int):
    """(scheduler, step unit): cosine per epoch as VM-UNet; poly per iteration as TransUNet/Swin-UNet."""
    s = cfg.scheduler
    if s.name == "cosine":
        t_max = s.t_max or cfg.train.epochs
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=s.eta_min), "epoch"
    if s.name == "poly":
        total = max(1, cfg.train.epochs * steps_per_epoch)
        return (
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 - min(it, total - 1) / total) ** s.power),
            "step",
        )
    return None, "epoch"


def build_loss(cfg: ExperimentConfig, task: str, num_classes: int) -> torch.nn.Module:
    name = cfg.loss.name
    if name == "auto":
        name = "bce_dice" if task == "binary" else "ce_dice"
    kwargs: dict[str, Any] = {"dice_weight": cfg.loss.dice_weight} if "dice" in name else {}
    if name.startswith("bce"):
        kwargs["bce_weight"] = cfg.loss.bce_weight
    if name.startswith("ce"):
        kwargs["ce_weight"] = cfg.loss.ce_weight
        if "dice" in name:
            kwargs["include_background"] = cfg.loss.include_background
    if name in ("bce", "ce"):
        kwargs.pop("dice_weight", None)
    return losses_mod.build_loss(name, num_classes, **kwargs)


def _loss_for_output(loss_fn, output, target, model):
    """Deep-supervision models (TransFuse) return several heads while training."""
    if isinstance(output, (tuple, list)):
        weights = getattr(model, "deep_supervision_weights", None)
        if weights is None:
            raise ValueError(f"{type(model).__name__} returned {len(output)} outputs but declares no deep_supervision_weights")
        return losses_mod.DeepSupervisionLoss(loss_fn, weights)(output, target)
    return loss_fn(output, target)


def _target(batch: dict[str, Any], task: str, device: torch.device) -> torch.Tensor:
    mask = batch["mask"].to(device, non_blocking=True)
    return mask.float() if task == "binary" else mask.long()


def _reraise_data_error(err: Exception) -> None:
    """DataLoader workers re-raise with a multi-line wrapper: keep the original one-line message."""
    text = str(err)
    marker = "DataError: "
    if marker in text:
        raise DataError(text.rsplit(marker, 1)[1].strip()) from None
    raise err


def _iterate(loader: DataLoader) -> Iterable[dict[str, Any]]:
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except DataError as err:
            _reraise_data_error(err)
        yield batch


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _amp_context(cfg: ExperimentConfig, device: torch.device):
    if cfg.train.amp == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    if device.type != "cuda":
        raise ValueError(f"train.amp={cfg.train.amp!r} needs a CUDA device (running on {device.type})")
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------
# Evaluation


def _predict_probs(model, images: torch.Tensor, task: str) -> torch.Tensor:
    logits = model(images)
    if isinstance(logits, (tuple, list)):
        logits = logits[-1]
    return torch.sigmoid(logits) if task == "binary" else torch.softmax(logits, dim=1)


@torch.no_grad()
def evaluate_2d(model, dataset, device: torch.device, batch_size: int = 8, loss_fn=None, progress=False) -> EvalResult:
    """ISIC: pooled confusion matrix over all test pixels (P1) plus per-image Dice/IoU (P2)."""
    model.eval()
    info = vmbench.dataset_info(dataset.name)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    pooled = metrics_mod.PooledConfusion()
    rows: list[dict[str, Any]] = []
    loss_sum, n = 0.0, 0
    for batch in _progress(_iterate(loader), len(loader), "eval", progress):
        images = batch["image"].to(device)
        target = _target(batch, info.task, device)
        logits = model(images)
        if isinstance(logits, (tuple, list)):
            logits = logits[-1]
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, target)) * images.shape[0]
            n += images.shape[0]
        probs = torch.sigmoid(logits.float())
        pooled.update(probs, target)
        per_image = metrics_mod.isic_per_image(probs.cpu(), target.cpu())
        for i, case_id in enumerate(batch["id"]):
            rows.append(
                {
                    "id": case_id,
                    "dice": float(per_image["dice"][i]),
                    "iou": float(per_image["iou"][i]),
                    "acc": float(per_image["acc"][i]),
                }
            )
    summary = {k: float(v) for k, v in pooled.compute().items()}
    summary["per_image_dice"] = float(np.mean([r["dice"] for r in rows])) if rows else float("nan")
    summary["per_image_iou"] = float(np.mean([r["iou"] for r in rows])) if rows else float("nan")
    if loss_fn is not None and n:
        summary["loss"] = loss_sum / n
    summary["n_images"] = len(rows)
    return EvalResult(rows, summary)


@torch.no_grad()
def predict_volume(model, volume: np.ndarray, img_size: tuple[int, int], device, batch_size: int = 16) -> np.ndarray:
    """Slice-wise inference as TransUNet's ``test_single_volume``.

    Each (H, W) slice is zoomed to ``img_size`` with cubic spline (order 3), the argmax of the
    softmax is taken, and the label map is zoomed back with order 0.
    """
    from scipy.ndimage import zoom

    model.eval()
    depth, height, width = volume.shape
    prediction = np.zeros(volume.shape, dtype=np.int64)
    for start in range(0, depth, batch_size):
        stop = min(depth, start + batch_size)
        slices = [
            zoom(volume[i], (img_size[0] / height, img_size[1] / width), order=3)
            if (height, width) != tuple(img_size)
            else volume[i]
            for i in range(start, stop)
        ]
        batch = torch.from_numpy(np.stack(slices)[:, None].astype(np.float32)).to(device)
        logits = model(batch)
        if isinstance(logits, (tuple, list)):
            logits = logits[-1]
        labels = torch.argmax(torch.softmax(logits.float(), dim=1), dim=1).cpu().numpy()
        for offset, label in enumerate(labels):
            if (height, width) != tuple(img_size):
                label = zoom(label, (height / img_size[0], width / img_size[1]), order=0)
            prediction[start + offset] = label
    return prediction


@torch.no_grad()
def evaluate_volumes(model, dataset, device, img_size, with_hd95: bool = True, progress=False) -> EvalResult:
    """Synapse P3: per case and organ 3D DSC/HD95, in the papers' mode and in the strict mode."""
    info = vmbench.dataset_info(dataset.name)
    rows: list[dict[str, Any]] = []
    paper_cases, strict_cases = [], []
    class_names = getattr(dataset, "class_names", None) or info.class_names
    for index in _progress(range(len(dataset)), len(dataset), "eval", progress):
        item = dataset[index]
        prediction = predict_volume(model, item["image"], img_size, device)
        # Validation (with_hd95=False) scores Dice by the same P3 rules as the test, without HD95.
        paper = metrics_mod.synapse_case_metrics(
            prediction, item["label"], info.num_classes, mode="paper", case_id=item["id"], with_hd95=with_hd95
        )
        strict = metrics_mod.synapse_case_metrics(
            prediction, item["label"], info.num_classes, mode="strict", spacing=item.get("spacing"),
            case_id=item["id"], with_hd95=with_hd95,
        )  # fmt: skip
        paper_cases.append(paper)
        strict_cases.append(strict)
        for k, cls in enumerate(paper.classes):
            row = {
                "id": item["id"],
                "class": int(cls),
                "organ": class_names[cls] if cls < len(class_names) else f"class {cls}",
                "dice": float(paper.dice[k]),
                "hd95": float(paper.hd95[k]),
                "dice_strict": float(strict.dice[k]),
                "hd95_strict": float(strict.hd95[k]),
            }
            rows.append(row if with_hd95 else {key: v for key, v in row.items() if not key.startswith("hd95")})
    s_paper = metrics_mod.summarize_synapse(paper_cases)
    s_strict = metrics_mod.summarize_synapse(strict_cases)
    summary = {"dsc": float(s_paper.mean_dice)}
    if with_hd95:
        summary["hd95"] = float(s_paper.mean_hd95)
    # Per organ under the dataset's own class names (the keys of the published rows).
    for k, cls in enumerate(s_paper.classes):
        organ = class_names[cls] if cls < len(class_names) else f"class{cls}"
        summary[f"dsc_{organ}"] = float(s_paper.dice_per_class[k])
        if with_hd95:
            summary[f"hd95_{organ}"] = float(s_paper.hd95_per_class[k])
    summary["dsc_strict"] = float(s_strict.mean_dice)
    if with_hd95:
        summary["hd95_strict"] = float(s_strict.mean_hd95)
    summary["n_cases"] = len(dataset)
    return EvalResult(rows, summary)


def evaluate(model, dataset, device, img_size, loss_fn=None, progress=False, with_hd95=True) -> EvalResult:
    if getattr(dataset, "is_volume", False):
        return evaluate_volumes(model, dataset, device, img_size, with_hd95=with_hd95, progress=progress)
    return evaluate_2d(model, dataset, device, loss_fn=loss_fn, progress=progress)


def write_eval(result: EvalResult, out_dir: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Per-case CSV and summary JSON, each written to a temporary name and renamed."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "per_case.csv", out_dir / "summary.json"
    tmp_csv = csv_path.with_name(f".{csv_path.name}.tmp")
    pd.DataFrame(result.rows).to_csv(tmp_csv, index=False)
    os.replace(tmp_csv, csv_path)
    tmp_json = json_path.with_name(f".{json_path.name}.tmp")
    tmp_json.write_text(json.dumps({**meta, "metrics": result.summary}, indent=2, default=_json_default))
    os.replace(tmp_json, json_path)
    return csv_path, json_path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------------------------
# Checkpoints


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
        return cls(
            config=values["config"],
            epoch=int(values["epoch"]),
            img_size=tuple(int(v) for v in values["img_size"]),
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


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> TrainState:
    """The :class:`TrainState` in a vmbench checkpoint file (``weights_only=True``)."""
    return TrainState.from_dict(load_checkpoint(path, map_location), source=str(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = read_checkpoint(path, map_location)  # weights_only=True; clear CheckpointFormatError otherwise
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a vmbench checkpoint (expected keys 'model' and 'config')")
    return ckpt


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, its ExperimentConfig, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    cfg = ExperimentConfig.from_dict(ckpt["config"], source=str(path))
    cfg.model.pretrained = None  # the checkpoint already holds the weights
    info = vmbench.dataset_info(cfg.data.name)
    img_size = tuple(ckpt["img_size"])
    model = build_model(cfg, info.num_classes, img_size)
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval(), cfg, ckpt


# ------------------------------------------------------------------------------------------------
# Training


def _img_size(cfg: ExperimentConfig, info) -> tuple[int, int]:
    size = cfg.data.img_size
    if size is None:
        return tuple(info.img_size)
    return (size, size) if isinstance(size, int) else tuple(size)


def _resume_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that define the training trajectory (not where or how it is shown)."""
    config = json.loads(json.dumps(config))
    config.pop("out_dir", None)
    config.get("train", {}).pop("progress", None)
    config.get("data", {}).pop("num_workers", None)
    return config


def fit(cfg: ExperimentConfig, callbacks: Iterable[Callable[[EpochResult], Any]] = (), resume: bool = False,
        evaluate_test: bool = True) -> FitResult:
    """Train, checkpoint every epoch, select ``best.pt``, evaluate it on the test split."""
    device = resolve_device(cfg.train.device)
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    info = vmbench.dataset_info(cfg.data.name)
    img_size = _img_size(cfg, info)

    seed_everything(cfg.train.seed)
    data_kwargs = dict(
        root=cfg.data.root, protocol=cfg.data.protocol, img_size=img_size, seed=cfg.train.seed, **cfg.data.options
    )
    train_set = build_dataset(cfg.data.name, split="train", **data_kwargs)
    try:
        val_set = build_dataset(cfg.data.name, split="val", **data_kwargs)
    except DataError as err:
        if cfg.data.protocol != "paper":
            raise
        log.info("no validation split: %s", err)
        val_set = None
    # Built now so that missing test data fails before training, and to record its preprocessing.
    test_set = build_dataset(cfg.data.name, split="test", **data_kwargs)
    preprocess = preprocess_record(test_set, info.evaluation)
    val_is_test = bool(getattr(val_set, "val_is_test", False))
    metric, mode = selection_rule(cfg, val_is_test, val_set is not None, info.evaluation)
    if val_is_test:
        log.warning("protocol 'paper': the validation split is the test split, so selection on %s is optimistic", metric)

    model = build_model(cfg, info.num_classes, img_size).to(device)
    loss_fn = build_loss(cfg, info.task, info.num_classes)
    optimizer = build_optimizer(cfg, model)
    batch_size = cfg.train.batch_size
    # A last batch of one sample breaks BatchNorm in training mode (UNet baselines): drop it.
    drop_last = len(train_set) % batch_size == 1 and len(train_set) > batch_size
    steps_per_epoch = len(train_set) // batch_size if drop_last else math.ceil(len(train_set) / batch_size)
    scheduler, sched_unit = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16")

    start_epoch, history = 0, []
    best_value = math.inf if mode == "min" else -math.inf
    best_epoch = 0
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        if _resume_identity(state["config"]) != _resume_identity(cfg.to_dict()):
            raise ValueError(f"cannot resume from {last_path}: it was written with a different configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], list(state["history"])
        best_value, best_epoch = state["best_value"], state["best_epoch"]
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    callbacks = list(callbacks)
    for epoch in range(start_epoch, cfg.train.epochs):
        started = time.perf_counter()
        seed = epoch_seed(cfg.train.seed, epoch)
        seed_everything(seed)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        loader = DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=True,
            drop_last=drop_last,
            num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        model.train()
        loss_sum, n_seen = 0.0, 0
        bar = _progress(_iterate(loader), steps_per_epoch, f"epoch {epoch + 1}/{cfg.train.epochs}", cfg.train.progress)
        for step, batch in enumerate(bar):
            images = batch["image"].to(device, non_blocking=True)
            target = _target(batch, info.task, device)
            with _amp_context(cfg, device):
                output = model(images)
            output = tuple(o.float() for o in output) if isinstance(output, (tuple, list)) else output.float()
            loss = _loss_for_output(loss_fn, output, target, model)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(model {cfg.model.name}, lr {cfg.optim.lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None and sched_unit == "step":
                scheduler.step()
            loss_sum += loss.item() * images.shape[0]
            n_seen += images.shape[0]
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.4f}")
        metrics: dict[str, float] = {"train_loss": loss_sum / max(n_seen, 1), "lr": optimizer.param_groups[0]["lr"]}
        if scheduler is not None and sched_unit == "epoch":
            scheduler.step()
        validate = val_set is not None and ((epoch + 1) % cfg.train.val_interval == 0 or epoch + 1 == cfg.train.epochs)
        if validate:
            result = evaluate(model, val_set, device, img_size, loss_fn=loss_fn, with_hd95=False)
            metrics.update({f"val_{k}": v for k, v in result.summary.items() if isinstance(v, (int, float))})
        metrics["epoch_time_s"] = time.perf_counter() - started

        is_best = False
        value = metrics.get(metric)
        if value is not None and (value < best_value if mode == "min" else value > best_value):
            best_value, best_epoch, is_best = float(value), epoch + 1, True
        history.append({"epoch": epoch + 1, **metrics})
        state = {
            "format": CHECKPOINT_FORMAT,
            "vmbench_version": vmbench.__version__,
            "config": cfg.to_dict(),
            "img_size": list(img_size),
            "preprocess": preprocess,
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "history": history,
            "best_value": best_value,
            "best_epoch": best_epoch,
            "select_metric": metric,
        }
        _atomic_save(state, last_path)
        if is_best:
            _atomic_save({k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "scaler")}, best_path)
        log.info("epoch %d/%d %s", epoch + 1, cfg.train.epochs, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        for callback in callbacks:
            callback(EpochResult(epoch + 1, metrics, last_path, best_path if best_path.exists() else None, is_best))

    if not best_path.exists():  # e.g. the selection metric was never produced
        raise RuntimeError(f"no epoch produced the selection metric {metric!r}; nothing to select in {out_dir}")
    result = FitResult(out_dir, best_path, last_path, best_epoch, best_value, metric, mode, cfg.data.protocol, history)
    if evaluate_test:
        result.test = evaluate_checkpoint(best_path, split="test", out_dir=out_dir / "eval" / "test", device=device).summary
    return result


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    split: str = "test",
    protocol: str | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> EvalResult:
    """Evaluate a checkpoint on a split; writes per_case.csv and summary.json when out_dir is given."""
    device = resolve_device(device) if isinstance(device, str) else device
    model, cfg, ckpt = model_from_checkpoint(checkpoint, device)
    name = dataset or cfg.data.name
    protocol = protocol or cfg.data.protocol
    img_size = tuple(ckpt["img_size"])
    same_data = name == cfg.data.name
    data = build_dataset(
        name,
        root=root if root is not None else (cfg.data.root if same_data else None),
        split=split,
        protocol=protocol,
        img_size=img_size,
        seed=cfg.train.seed,
        **(cfg.data.options if same_data else {}),
    )
    result = evaluate(model, data, device, img_size, progress=progress)
    if out_dir is not None:
        meta = {
            "checkpoint": str(checkpoint),
            "model": cfg.model.name,
            "dataset": name,
            "split": split,
            "protocol": protocol,
            "epoch": ckpt["epoch"],
            "img_size": list(img_size),
            "val_is_test": bool(getattr(data, "val_is_test", False)),
            "vmbench_version": vmbench.__version__,
        }
        write_eval(result, Path(out_dir), meta)
    return result
