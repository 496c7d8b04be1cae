"""Binary losses (ISIC, one output channel of logits): VM-UNet's BCE + Dice and PraNet's structure loss.

:class:`BceDiceLoss` is VM-UNet's ``BceDiceLoss(wb=1, wd=1)``: the mean binary cross-entropy
over all pixels plus a soft Dice loss on sigmoid probabilities,
``1 - mean_b (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` per sample, ``smooth = 1``.
The official code applies ``nn.BCELoss`` to sigmoid outputs; here the BCE term is taken on
the logits (``binary_cross_entropy_with_logits``), which is the same number for moderate
logits and stays exact where ``BCELoss`` clamps ``log`` at -100 (|logit| >~ 17 in float32).

:class:`StructureLoss` is PraNet's weighted BCE + weighted IoU that TransFuse trains with.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vmbench.losses._common import check_weight, compute_dtype
from vmbench.losses.registry import register_loss

__all__ = ["BceDiceLoss", "StructureLoss"]


class BceDiceLoss(nn.Module):
    """``bce_weight * BCE(logits, target) + dice_weight * SoftDice(sigmoid(logits), target)``.

    ``logits`` and ``target`` have the same batch size and the same number of elements per
    sample (e.g. ``(B, 1, H, W)`` logits with a ``(B, 1, H, W)`` or ``(B, H, W)`` mask); the
    target may be soft (values in [0, 1]).

    * BCE: mean over every pixel of the batch (``nn.BCELoss`` on the flattened batch in the
      official code), computed from logits for numerical stability.
    * Dice: per sample ``(2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` on sigmoid
      probabilities ``p``; the loss is ``1 -`` its mean over the batch.

    A term whose weight is 0 is not computed.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight = check_weight("bce_weight", bce_weight)
        self.dice_weight = check_weight("dice_weight", dice_weight)
        self.smooth = check_weight("smooth", smooth)
        if self.bce_weight == 0 and self.dice_weight == 0:
            raise ValueError("bce_weight and dice_weight are both 0: the loss would be constant")

    def extra_repr(self) -> str:
        return f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, smooth={self.smooth}"

    @staticmethod
    def _pair(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (at least float32) and the target in their dtype and shape; shape errors name both."""
        if logits.dim() < 1 or target.dim() < 1 or logits.shape[0] != target.shape[0]:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must share the batch size"
            )
        if logits.numel() != target.numel():
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same "
                "number of elements per sample (a binary loss expects one output channel)"
            )
        x = compute_dtype(logits)
        return x, target.reshape(x.shape).to(x.dtype)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x, t = self._pair(logits, target)
        b = x.shape[0]
        x, t = x.reshape(b, -1), t.reshape(b, -1)
        loss = x.new_zeros(())
        if self.bce_weight:
            loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(x, t)
        if self.dice_weight:
            p = torch.sigmoid(x)
            score = (2.0 * (p * t).sum(1) + self.smooth) / (p.sum(1) + t.sum(1) + self.smooth)
            loss = loss + self.dice_weight * (1.0 - score.mean())
        return loss


class StructureLoss(nn.Module):
    """PraNet's structure loss, which TransFuse trains every head with (binary, logits).

    Pixel weights ``w = 1 + 5 |avgpool_31(t) - t|`` (31x31 mean with zero padding counted,
    stride 1) emphasise boundaries; per sample and channel the loss is a BCE-with-logits term
    plus a weighted soft IoU ``1 - (sum(w p t) + 1) / (sum(w (p + t)) - sum(w p t) + 1)``; the
    result is their mean. ``logits`` and ``target`` are ``(B, C, H, W)`` of the same shape.

    The BCE term is what PraNet's and TransFuse's code computes: they call
    ``binary_cross_entropy_with_logits(pred, mask, reduce='none')``, and ``reduce`` is PyTorch's
    legacy boolean flag, so the truthy string gives the mean over the whole batch and the pixel
    weights applied to that scalar cancel: a plain mean BCE. ``weighted_bce=True`` gives the
    boundary-weighted mean ``sum(w bce) / sum(w)`` per sample that the papers describe.
    """

    def __init__(self, kernel_size: int = 31, edge_weight: float = 5.0, weighted_bce: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if not isinstance(weighted_bce, bool):
            raise ValueError(f"weighted_bce must be true or false, got {weighted_bce!r}")
        self.kernel_size = int(kernel_size)
        self.edge_weight = check_weight("edge_weight", edge_weight)
        self.weighted_bce = weighted_bce

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 4:
            raise ValueError(f"StructureLoss expects (B, C, H, W) logits, got {tuple(logits.shape)}")
        if target.dim() == 3:
            target = target.unsqueeze(1)
        if target.shape != logits.shape:
            raise ValueError(f"target {tuple(target.shape)} must match logits {tuple(logits.shape)}")
        x = compute_dtype(logits)
        t = target.to(x.dtype)
        k = self.kernel_size
        local_mean = F.avg_pool2d(t, kernel_size=k, stride=1, padding=k // 2)
        w = 1.0 + self.edge_weight * (local_mean - t).abs()
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        wbce = (w * bce).sum((2, 3)) / w.sum((2, 3)) if self.weighted_bce else bce.mean()
        p = torch.sigmoid(x)
        inter = (w * p * t).sum((2, 3))
        union = (w * (p + t)).sum((2, 3))
        wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
        return (wbce + wiou).mean()


# Registrations. ``build_loss`` checks num_classes against the declared task, so the factories
# need not; ``options`` are the loss: keys the engine passes (structure has none: the papers
# train it unweighted).


@register_loss("bce_dice", task="binary", options=("bce_weight", "dice_weight"))
def _bce_dice(num_classes: int, **kw: Any) -> nn.Module:
    return BceDiceLoss(**kw)


@register_loss("bce", task="binary", options=("bce_weight",))
def _bce(num_classes: int, **kw: Any) -> nn.Module:
    return BceDiceLoss(bce_weight=kw.pop("bce_weight", 1.0), dice_weight=0.0, **kw)


@register_loss("structure", task="binary")
def _structure(num_classes: int, **kw: Any) -> nn.Module:
    return StructureLoss(**kw)
