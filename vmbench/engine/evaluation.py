"""Evaluation: ISIC's pooled and per-image metrics, Synapse's per-volume 3-D metrics, their files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import vmbench
from vmbench import metrics as metrics_mod
from vmbench.data import dataset_for
from vmbench.engine.batches import iterate, progress_bar, target_tensor
from vmbench.engine.builders import resolve_device
from vmbench.engine.outputs import final_logits
from vmbench.engine.state import model_from_checkpoint
from vmbench.io import atomic_write
from vmbench.protocols import CV, HOLDOUT, MULTICLASS_2D, PAPER

# Where 2D test predictions are scored: at each image's released size (as the ISIC Challenge
# scores submissions) or at the training size (VM-UNet's published protocol, masks resized to 256).
NATIVE_SIZE, TRAINING_SIZE = "native", "training"


def eval_resolution(cfg) -> str:
    """``data.eval_resolution``; ``auto``: the training size under the paper protocol (faithful to
    the published numbers), each image's own size otherwise."""
    choice = cfg.data.eval_resolution
    if choice == "auto":
        return TRAINING_SIZE if cfg.data.protocol == PAPER else NATIVE_SIZE
    return choice

__all__ = [
    "NATIVE_SIZE",
    "TRAINING_SIZE",
    "EvalResult",
    "eval_resolution",
    "evaluate",
    "evaluate_2d",
    "evaluate_checkpoint",
    "evaluate_into",
    "evaluate_transfer",
    "evaluate_multiclass_2d",
    "evaluate_volumes",
    "evaluation_meta",
    "predict_volume",
    "transfer_config",
    "write_eval",
]


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]  # per case (ISIC: per image; Synapse: per case and class)
    summary: dict[str, Any]
    resolution: str = TRAINING_SIZE  # where 2D predictions were scored: NATIVE_SIZE or TRAINING_SIZE


def _native_pairs(dataset, start: int, probs: torch.Tensor):
    """(probability map resized to the image's own size, its mask at that size) per image of a
    batch that starts at dataset index ``start``: probabilities are resized bilinearly before
    thresholding, as challenges score masks at the size the image was released in."""
    for i in range(probs.shape[0]):
        height, width = dataset.native_size(start + i)
        truth = torch.from_numpy(np.asarray(dataset.native_mask(start + i), dtype=np.uint8)).to(probs.device)
        resized = F.interpolate(probs[i : i + 1].float(), size=(height, width), mode="bilinear", align_corners=False)
        yield resized[0], truth[None]


def _image_rows(case_ids, probs, target) -> list[dict[str, Any]]:
    """Per image: TransFuse's P2 Dice/IoU/accuracy and the ISIC Challenge's Jaccard scores."""
    per_image = metrics_mod.isic_per_image(probs.cpu(), target.cpu())
    rows = []
    for i, case_id in enumerate(case_ids):
        challenge = metrics_mod.isic_challenge_per_image(probs[i].cpu() >= 0.5, target[i].cpu() >= 0.5)
        rows.append({"id": case_id, **{k: float(per_image[k][i]) for k in ("dice", "iou", "acc")},
                     "jaccard": challenge["jaccard"], "threshold_jaccard": challenge["threshold_jaccard"]})
    return rows


@torch.no_grad()
def evaluate_2d(model, dataset, device: torch.device, batch_size: int = 8, loss_fn=None, progress=False,
                native: bool = False) -> EvalResult:
    """ISIC: pooled confusion matrix over all test pixels (P1) plus per-image Dice/IoU (P2) and the
    ISIC Challenge's per-image Jaccard and thresholded Jaccard. ``native``: scored at each image's
    own size (datasets that provide ``native_size``/``native_mask``), else at the training size."""
    model.eval()
    info = vmbench.dataset_info(dataset.name)
    native = native and hasattr(dataset, "native_mask")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    pooled = metrics_mod.PooledConfusion()
    rows: list[dict[str, Any]] = []
    loss_sum, n, start = 0.0, 0, 0
    for batch in progress_bar(iterate(loader), len(loader), "eval", progress):
        images = batch["image"].to(device)
        target = target_tensor(batch, info.task, device)
        logits = final_logits(model(images))
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, target)) * images.shape[0]
            n += images.shape[0]
        probs = torch.sigmoid(logits.float())
        if native:
            for case_id, (prob, truth) in zip(batch["id"], _native_pairs(dataset, start, probs)):
                pooled.update(prob, truth)
                rows += _image_rows([case_id], prob[None], truth[None].float())
        else:
            pooled.update(probs, target)
            rows += _image_rows(batch["id"], probs, target)
        start += images.shape[0]
    summary = {k: float(v) for k, v in pooled.compute().items()}
    for key, column in (("per_image_dice", "dice"), ("per_image_iou", "iou"), ("jaccard", "jaccard"),
                        ("threshold_jaccard", "threshold_jaccard")):
        summary[key] = float(np.mean([r[column] for r in rows])) if rows else float("nan")
    if loss_fn is not None and n:
        summary["loss"] = loss_sum / n
    summary["n_images"] = len(rows)
    return EvalResult(rows, summary, NATIVE_SIZE if native else TRAINING_SIZE)


def _class_dice(pred: torch.Tensor, truth: torch.Tensor, cls: int) -> float:
    """Dice of class ``cls`` on one image; NaN when the class is in neither map (nothing to score:
    nnU-Net's convention, rather than a free 1.0)."""
    p, t = pred == cls, truth == cls
    total = int(p.sum()) + int(t.sum())
    return 2.0 * int((p & t).sum()) / total if total else float("nan")


@torch.no_grad()
def evaluate_multiclass_2d(model, dataset, device: torch.device, batch_size: int = 8, loss_fn=None,
                           progress=False, native: bool = False) -> EvalResult:
    """Multi-class 2D (user datasets): per image and foreground class the Dice of the argmax map,
    then ``dsc`` (mean over images and classes, a class absent from both maps left out) and
    ``dsc_<class>`` (mean over images). ``native``: probabilities resized bilinearly to each
    image's own size before the argmax, scored against its released mask."""
    model.eval()
    info = vmbench.dataset_info(dataset.name)
    class_names = getattr(dataset, "class_names", None) or info.class_names
    native = native and hasattr(dataset, "native_mask")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    rows: list[dict[str, Any]] = []
    loss_sum, n, start = 0.0, 0, 0
    for batch in progress_bar(iterate(loader), len(loader), "eval", progress):
        images = batch["image"].to(device)
        target = target_tensor(batch, info.task, device)
        logits = final_logits(model(images)).float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, target)) * images.shape[0]
            n += images.shape[0]
        probs = torch.softmax(logits, dim=1)
        pairs = (_native_pairs(dataset, start, probs) if native
                 else ((probs[i], target[i][None]) for i in range(probs.shape[0])))
        for case_id, (prob, truth) in zip(batch["id"], pairs):
            pred, truth = prob.argmax(dim=0), truth.reshape(prob.shape[1:]).long()
            for cls in range(1, info.num_classes):
                rows.append({"id": case_id, "class": cls, "organ": _organ(class_names, cls),
                             "dice": _class_dice(pred, truth, cls)})
        start += images.shape[0]
    summary: dict[str, Any] = {"dsc": float(np.nanmean([r["dice"] for r in rows])) if rows else float("nan")}
    for cls in range(1, info.num_classes):
        values = [r["dice"] for r in rows if r["class"] == cls]
        summary[f"dsc_{_organ(class_names, cls, sep='')}"] = float(np.nanmean(values)) if values else float("nan")
    if loss_fn is not None and n:
        summary["loss"] = loss_sum / n
    summary["n_images"] = start
    return EvalResult(rows, summary, NATIVE_SIZE if native else TRAINING_SIZE)


@torch.no_grad()
def predict_volume(model, volume: np.ndarray, img_size: tuple[int, int], device, batch_size: int = 16) -> np.ndarray:
    """Slice-wise inference as TransUNet's ``test_single_volume`` (Beckschen/TransUNet@02ef001,
    ``utils.py``): each (H, W) slice is zoomed to ``img_size`` with a cubic spline (order 3), the
    argmax of the softmax is taken, and the label map is zoomed back with order 0."""
    from scipy.ndimage import zoom

    model.eval()
    depth, height, width = volume.shape
    resize = (height, width) != tuple(img_size)
    prediction = np.zeros(volume.shape, dtype=np.int64)
    for start in range(0, depth, batch_size):
        stop = min(depth, start + batch_size)
        slices = [
            zoom(volume[i], (img_size[0] / height, img_size[1] / width), order=3) if resize else volume[i]
            for i in range(start, stop)
        ]
        batch = torch.from_numpy(np.stack(slices)[:, None].astype(np.float32)).to(device)
        logits = final_logits(model(batch))
        labels = torch.argmax(torch.softmax(logits.float(), dim=1), dim=1).cpu().numpy()
        for offset, label in enumerate(labels):
            if resize:
                label = zoom(label, (height / img_size[0], width / img_size[1]), order=0)
            prediction[start + offset] = label
    return prediction


def _organ(class_names, cls: int, sep: str = " ") -> str:
    return class_names[cls] if cls < len(class_names) else f"class{sep}{cls}"


def _case_rows(case_id, paper, strict, class_names, with_hd95: bool) -> list[dict[str, Any]]:
    """One row per organ of one case: Dice (and HD95) in the papers' mode and the strict mode."""
    rows = []
    for k, cls in enumerate(paper.classes):
        row = {"id": case_id, "class": int(cls), "organ": _organ(class_names, cls), "dice": float(paper.dice[k])}
        if with_hd95:
            row["hd95"] = float(paper.hd95[k])
        row["dice_strict"] = float(strict.dice[k])
        if with_hd95:
            row["hd95_strict"] = float(strict.hd95[k])
        rows.append(row)
    return rows


def _volume_summary(paper_cases, strict_cases, class_names, with_hd95: bool) -> dict[str, Any]:
    s_paper = metrics_mod.summarize_synapse(paper_cases)
    s_strict = metrics_mod.summarize_synapse(strict_cases)
    summary = {"dsc": float(s_paper.mean_dice)}
    if with_hd95:
        summary["hd95"] = float(s_paper.mean_hd95)
    # Per organ under the dataset's own class names (the keys of the published rows).
    for k, cls in enumerate(s_paper.classes):
        organ = _organ(class_names, cls, sep="")
        summary[f"dsc_{organ}"] = float(s_paper.dice_per_class[k])
        if with_hd95:
            summary[f"hd95_{organ}"] = float(s_paper.hd95_per_class[k])
    summary["dsc_strict"] = float(s_strict.mean_dice)
    if with_hd95:
        summary["hd95_strict"] = float(s_strict.mean_hd95)
    return summary


@torch.no_grad()
def evaluate_volumes(model, dataset, device, img_size, with_hd95: bool = True, progress=False) -> EvalResult:
    """Synapse P3: per case and organ 3D DSC/HD95, in the papers' mode and in the strict mode."""
    info = vmbench.dataset_info(dataset.name)
    rows: list[dict[str, Any]] = []
    paper_cases, strict_cases = [], []
    class_names = getattr(dataset, "class_names", None) or info.class_names
    for index in progress_bar(range(len(dataset)), len(dataset), "eval", progress):
        item = dataset[index]
        prediction = predict_volume(model, item["image"], img_size, device)
        # Validation (with_hd95=False) scores Dice by the same P3 rules as the test, without HD95.
        common = dict(case_id=item["id"], with_hd95=with_hd95)
        paper = metrics_mod.synapse_case_metrics(prediction, item["label"], info.num_classes, mode="paper", **common)
        strict = metrics_mod.synapse_case_metrics(
            prediction, item["label"], info.num_classes, mode="strict", spacing=item.get("spacing"), **common
        )
        paper_cases.append(paper)
        strict_cases.append(strict)
        rows.extend(_case_rows(item["id"], paper, strict, class_names, with_hd95))
    summary = _volume_summary(paper_cases, strict_cases, class_names, with_hd95)
    summary["n_cases"] = len(dataset)
    return EvalResult(rows, summary)


def evaluate(model, dataset, device, img_size, loss_fn=None, progress=False, with_hd95=True,
             native: bool = False) -> EvalResult:
    """Volumes are always scored at their own size (slices are resized back); 2D images at their
    own size with ``native`` (see :func:`evaluate_2d`)."""
    if getattr(dataset, "is_volume", False):
        return evaluate_volumes(model, dataset, device, img_size, with_hd95=with_hd95, progress=progress)
    if vmbench.dataset_info(dataset.name).evaluation == MULTICLASS_2D:
        return evaluate_multiclass_2d(model, dataset, device, loss_fn=loss_fn, progress=progress, native=native)
    return evaluate_2d(model, dataset, device, loss_fn=loss_fn, progress=progress, native=native)


def write_eval(result: EvalResult, out_dir: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Per-case CSV and summary JSON, each written atomically."""
    import pandas as pd

    csv_path, json_path = Path(out_dir) / "per_case.csv", Path(out_dir) / "summary.json"
    atomic_write(csv_path, pd.DataFrame(result.rows).to_csv(index=False))
    payload = {**meta, "resolution": result.resolution, "metrics": result.summary}
    atomic_write(json_path, json.dumps(payload, indent=2, default=_json_default))
    return csv_path, json_path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def evaluation_meta(checkpoint: str | Path, cfg, dataset, split: str, epoch: int,
                    img_size: tuple[int, int]) -> dict[str, Any]:
    """What ``summary.json`` records beside the metrics: which weights, on which data."""
    return {
        "checkpoint": str(checkpoint),
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "split": split,
        "protocol": cfg.data.protocol,
        "epoch": epoch,
        "img_size": list(img_size),
        "val_is_test": bool(getattr(dataset, "val_is_test", False)),
        "vmbench_version": vmbench.__version__,
    }


def evaluate_into(model, dataset, cfg, run_dir, split: str, checkpoint: str | Path, epoch: int,
                  img_size: tuple[int, int], device, native: bool = False) -> EvalResult:
    """Score ``model`` (the weights of ``checkpoint``) on ``dataset`` and write ``per_case.csv`` and
    ``summary.json`` to the run folder's ``eval/<split>/``."""
    evaluation = evaluate(model, dataset, device, img_size, native=native)
    write_eval(evaluation, run_dir.eval_dir(split), evaluation_meta(checkpoint, cfg, dataset, split, epoch, img_size))
    return evaluation


def _data_config(cfg, dataset: str | None, root: str | None, protocol: str | None,
                 options: dict[str, Any] | None = None):
    """The checkpoint's data settings, or another dataset's (:func:`transfer_config`)."""
    if dataset is None or dataset == cfg.data.name:
        overrides: dict[str, Any] = {"data.root": root} if root is not None else {}
        if protocol is not None and protocol != cfg.data.protocol:
            overrides.update(_protocol_overrides(protocol))
        return cfg.with_overrides(overrides, source="evaluation") if overrides else cfg
    return transfer_config(cfg, dataset, root, options, protocol)


def _protocol_overrides(protocol: str) -> dict[str, Any]:
    # A fold is kept only under protocol cv, where the test split is every fold's.
    return {"data.protocol": protocol, **({} if protocol == CV else {"data.fold": None})}


# Options that decide what the model's input looks like (not which data is read): a transfer target
# takes the trained configuration's, so that a model trained on z-scored images is not fed min-max ones.
INPUT_OPTIONS = ("normalize",)


def transfer_config(cfg, dataset: str, root: str | None = None, options: dict[str, Any] | None = None,
                    protocol: str | None = None):
    """``cfg`` (a trained model's configuration) with another dataset's data settings: its own root
    and ``options`` (a declared dataset's format and labels), none of the trained dataset's but its
    :data:`INPUT_OPTIONS` (the input normalisation, where the target takes that option). A dataset
    that does not run the trained protocol is scored on its holdout test split (a declared dataset
    has no published split), which ``summary.json`` records as the protocol."""
    overrides: dict[str, Any] = {"data.name": dataset, "data.root": root, "data.options": dict(options or {})}
    # Building the configuration registers a declared dataset (``options``: format, labels).
    target = vmbench.dataset_info(cfg.with_overrides(overrides, source="evaluation").data.name)
    for key in INPUT_OPTIONS:  # the model sees its inputs prepared as in training, where the target allows it
        if key in cfg.data.options and key in target.options and key not in overrides["data.options"]:
            overrides["data.options"][key] = cfg.data.options[key]
    if protocol is None:
        supported = target.protocols
        if cfg.data.protocol not in supported and HOLDOUT in supported:
            protocol = HOLDOUT
    if protocol is not None and protocol != cfg.data.protocol:
        overrides.update(_protocol_overrides(protocol))
    return cfg.with_overrides(overrides, source="evaluation")


def evaluate_transfer(model, trained_cfg, dataset: str, root: str | None, options: dict[str, Any] | None,
                      run_dir, checkpoint: str | Path, epoch: int, img_size: tuple[int, int], device,
                      split: str = "test") -> tuple[str, EvalResult]:
    """Score ``model`` (trained as ``trained_cfg``) on another dataset's ``split`` with no retraining
    (U-Bench's zero-shot axis) into the run folder's ``eval/<dataset>-<split>/``; returns that name
    and the evaluation. Predictions are scored at the target dataset's evaluation resolution."""
    cfg = transfer_config(trained_cfg, dataset, root, options)
    data = dataset_for(cfg, split, img_size=img_size)
    name = f"{dataset}-{split}"
    result = evaluate(model, data, device, img_size, native=eval_resolution(cfg) == NATIVE_SIZE)
    write_eval(result, run_dir.eval_dir(name), _scored_meta(checkpoint, cfg, trained_cfg, data, split, epoch, img_size))
    return name, result


def _scored_meta(checkpoint, cfg, trained_cfg, data, split: str, epoch: int, img_size) -> dict[str, Any]:
    """:func:`evaluation_meta`, and for a transfer evaluation which data the model learnt and which it met."""
    meta = evaluation_meta(checkpoint, cfg, data, split, epoch, img_size)
    if cfg.data.name != trained_cfg.data.name:
        meta.update(transfer=True, trained_on=trained_cfg.data.name, data_root=cfg.data.root)
    return meta


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    split: str = "test",
    protocol: str | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
    options: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate a checkpoint on a split; writes per_case.csv and summary.json when out_dir is given.
    ``dataset``: another registered (or declared, with its ``options``) dataset than the checkpoint's."""
    device = resolve_device(device, where="device")
    model, trained, state = model_from_checkpoint(checkpoint, device)
    cfg = _data_config(trained, dataset, root, protocol, options)
    data = dataset_for(cfg, split, img_size=state.img_size)
    result = evaluate(model, data, device, state.img_size, progress=progress,
                      native=eval_resolution(cfg) == NATIVE_SIZE)
    if out_dir is not None:
        write_eval(result, Path(out_dir), _scored_meta(checkpoint, cfg, trained, data, split, state.epoch, state.img_size))
    return result
