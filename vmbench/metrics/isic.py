"""ISIC metrics of the two published ISIC protocols.

P1, pooled (Ruan & Xiang 2024, JCruan519/VM-UNet@43c495b ``engine.py`` ``test_one_epoch``; the same
in MALUNet and EGE-UNet): :func:`isic_pooled` / :class:`PooledConfusion`. One confusion matrix over
every pixel of every test image, prediction ``prob >= threshold``, ground truth ``mask >= 0.5``.
"mIoU" is the foreground IoU ``TP / (TP + FP + FN)`` (not averaged with background), DSC
``2TP / (2TP + FP + FN)``, Acc, Spe ``TN / (TN + FP)``, Sen ``TP / (TP + FN)``; each ratio is 0 when
its denominator is 0 (as the official code).

P2, per image (Zhang et al. 2021, Rayicer/TransFuse@3f50ab6 ``test_isic.py`` ``mean_dice_np``,
``mean_iou_np``): :func:`isic_per_image`. Prediction ``prob > threshold`` and ground truth
``mask > 0.5`` (strict, as TransFuse), per image ``Dice = 2 (I + s) / (|P| + |G| + s)`` and
``IoU = (I + s) / (|P| + |G| - I + s)`` with ``s = 0.001``, then the mean over images. These are
TransFuse's formulas verbatim: note the smoothing inside ``2 (I + s)``, so an image with empty
prediction *and* empty ground truth scores Dice 2.0 (IoU 1.0). ISIC images always contain a
lesion, so this never occurs there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vmbench.metrics.arrays import _check_same_shape, _is_torch, _ratio, _to_numpy


# --------------------------------------------------------------------------------------------
# P1: pooled confusion matrix
# --------------------------------------------------------------------------------------------


def _confusion_counts(probs: Any, masks: Any, threshold: float) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of ``probs >= threshold`` against ``masks >= 0.5``."""
    if _is_torch(probs) or _is_torch(masks):
        import torch

        p = probs if _is_torch(probs) else torch.as_tensor(np.asarray(probs))
        m = masks if _is_torch(masks) else torch.as_tensor(np.asarray(masks), device=p.device)
        m = m.to(p.device)
        _check_same_shape(p, m)
        pred = (p.detach() >= threshold).reshape(-1)
        gt = (m.detach() >= 0.5).reshape(-1)
        n = pred.numel()
        tp = int((pred & gt).sum())
        npred = int(pred.sum())
        ngt = int(gt.sum())
    else:
        p, m = np.asarray(probs), np.asarray(masks)
        _check_same_shape(p, m)
        pred = (p >= threshold).reshape(-1)
        gt = (m >= 0.5).reshape(-1)
        n = pred.size
        tp = int(np.count_nonzero(pred & gt))
        npred = int(np.count_nonzero(pred))
        ngt = int(np.count_nonzero(gt))
    fp = npred - tp
    fn = ngt - tp
    tn = n - tp - fp - fn
    return tp, fp, fn, tn


def _pooled_scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    return {
        "miou": _ratio(tp, tp + fp + fn),
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": _ratio(tp + tn, tp + fp + fn + tn),
        "spe": _ratio(tn, tn + fp),
        "sen": _ratio(tp, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def isic_pooled(probs: Any, masks: Any, threshold: float = 0.5) -> dict[str, float | int]:
    """Protocol P1: one confusion matrix pooled over all pixels of all images.

    ``probs`` are foreground probabilities (``sigmoid(logits)``), ``masks`` the ground truth, of
    the same shape (singleton axes may differ, e.g. ``(N, 1, H, W)`` vs ``(N, H, W)``).
    Returns ``miou`` (foreground IoU), ``dsc``, ``acc``, ``spe``, ``sen`` as fractions and the
    integer counts ``tp``, ``fp``, ``fn``, ``tn``. A ratio with a zero denominator is 0.
    """
    return _pooled_scores(*_confusion_counts(probs, masks, threshold))


class PooledConfusion:
    """Streaming version of :func:`isic_pooled`: ``update`` batch by batch, then ``compute``.

    Only the four counts are kept, so the evaluation need not hold every image; the result is
    identical to :func:`isic_pooled` on the concatenated data. Counts stay on the CPU as Python
    ints (torch inputs are counted on their own device).
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, probs: Any, masks: Any) -> "PooledConfusion":
        tp, fp, fn, tn = _confusion_counts(probs, masks, self.threshold)
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += tn
        return self

    def merge(self, other: "PooledConfusion") -> "PooledConfusion":
        """Add another accumulator's counts (e.g. from another worker)."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def compute(self) -> dict[str, float | int]:
        return _pooled_scores(self.tp, self.fp, self.fn, self.tn)

    def __repr__(self) -> str:
        return (
            f"PooledConfusion(tp={self.tp}, fp={self.fp}, fn={self.fn}, tn={self.tn}, "
            f"threshold={self.threshold})"
        )


# --------------------------------------------------------------------------------------------
# P2: per-image mean (TransFuse)
# --------------------------------------------------------------------------------------------


def isic_per_image(probs: Any, masks: Any, threshold: float = 0.5, smooth: float = 0.001) -> dict[str, Any]:
    """Protocol P2 (TransFuse ``mean_dice_np`` / ``mean_iou_np``): per-image Dice and IoU.

    ``probs`` and ``masks`` are ``(N, H, W)`` or ``(N, 1, H, W)`` (first axis = images; a single
    image needs a leading axis). Binarised as ``probs > threshold`` and ``masks > 0.5``. Returns
    per-image arrays ``dice``, ``iou``, ``acc`` (pixel accuracy, as TransFuse logs it) of shape
    ``(N,)`` and their means ``mean_dice``, ``mean_iou``, ``mean_acc`` (NaN for N = 0).
    Dice is ``2 (I + smooth) / (|P| + |G| + smooth)`` exactly as TransFuse computes it.
    """
    p, m = _to_numpy(probs), _to_numpy(masks)
    if p.ndim < 3 or m.ndim < 3:
        raise ValueError(
            f"expected a batch (N, H, W) or (N, 1, H, W), got shapes {p.shape} and {m.shape}; "
            "add a leading axis for a single image"
        )
    if p.shape[0] != m.shape[0]:
        raise ValueError(f"probs and masks hold {p.shape[0]} and {m.shape[0]} images")
    _check_same_shape(p, m)
    n = p.shape[0]
    pred = (p > threshold).reshape(n, -1)
    gt = (m > 0.5).reshape(n, -1)
    inter = np.count_nonzero(pred & gt, axis=1).astype(np.float64)
    npred = np.count_nonzero(pred, axis=1).astype(np.float64)
    ngt = np.count_nonzero(gt, axis=1).astype(np.float64)
    npix = pred.shape[1]
    dice = 2.0 * (inter + smooth) / (npred + ngt + smooth)
    iou = (inter + smooth) / (npred + ngt - inter + smooth)
    acc = np.count_nonzero(pred == gt, axis=1) / float(npix) if npix else np.full(n, np.nan)

    def _mean(a: np.ndarray) -> float:
        return float(a.mean()) if a.size else float("nan")

    return {
        "dice": dice,
        "iou": iou,
        "acc": np.asarray(acc, dtype=np.float64),
        "mean_dice": _mean(dice),
        "mean_iou": _mean(iou),
        "mean_acc": _mean(np.asarray(acc, dtype=np.float64)),
    }


# --------------------------------------------------------------------------------------------
# The ISIC Challenge's own per-image metrics (Task 1)
# --------------------------------------------------------------------------------------------

# ISIC 2018 Task 1 ranks by the mean of this Jaccard, zeroed below 0.65 (Codella et al. 2019,
# arXiv:1902.03368; ImageMarkup/isic-challenge-scoring 5.6.0 ``segmentation.py``).
ISIC_JACCARD_THRESHOLD = 0.65


def isic_challenge_per_image(pred: Any, truth: Any) -> dict[str, float]:
    """One image's scores as the ISIC Challenge scorer computes them (isic-challenge-scoring 5.6.0,
    ``isic_challenge_scoring/metrics.py``): ``accuracy``, ``sensitivity``, ``specificity``,
    ``jaccard``, ``threshold_jaccard`` and ``dice`` of boolean (H, W) ``pred`` against ``truth``,
    with the scorer's conventions for empty sets (sensitivity 1 with no positive truth, specificity
    1 with no negative truth, Jaccard and Dice 1 when truth and prediction are both empty)."""
    p, t = _to_numpy(pred).astype(bool), _to_numpy(truth).astype(bool)
    _check_same_shape(p, t)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = p.size - tp - fp - fn
    union = tp + fp + fn
    jaccard = tp / union if union else 1.0
    return {
        "accuracy": (tp + tn) / p.size if p.size else float("nan"),
        "sensitivity": tp / (tp + fn) if tp + fn else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "jaccard": jaccard,
        "threshold_jaccard": jaccard if jaccard >= ISIC_JACCARD_THRESHOLD else 0.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
    }
