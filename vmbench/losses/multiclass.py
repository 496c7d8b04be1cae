"""Multi-class losses (Synapse, ``num_classes`` output channels of logits): CE + Dice.

:class:`CeDiceLoss` is VM-UNet's / TransUNet's ``CeDiceLoss``: cross-entropy on the logits
plus TransUNet's ``DiceLoss`` on softmax probabilities, per class
``1 - (2 sum(s t) + 1e-5) / (sum(s^2) + sum(t^2) + 1e-5)`` over the whole batch, averaged
over classes **including background** (as every paper trained it).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vmbench.losses._common import check_weight, compute_dtype
from vmbench.losses.binary import BceDiceLoss
from vmbench.losses.registry import register_loss

__all__ = ["CeDiceLoss"]


class CeDiceLoss(nn.Module):
    """``ce_weight * CE(logits, target) + dice_weight * Dice(softmax(logits), onehot(target))``.

    ``logits`` are ``(B, C, *spatial)`` with ``C == num_classes``; ``target`` holds integer labels
    ``(B, *spatial)`` (a ``(B, 1, *spatial)`` target is accepted; float labels must be integral).
    Labels outside ``[0, num_classes)`` raise ``ValueError`` naming the value (set
    ``check_targets=False`` to skip the check and its device sync).

    Dice (TransUNet ``DiceLoss``): for each class ``c`` over the whole batch,
    ``1 - (2 sum(s_c t_c) + smooth) / (sum(s_c^2) + sum(t_c^2) + smooth)``, then the mean over
    classes. ``include_background=True`` (default, as in the papers) averages over all
    ``num_classes``; ``False`` averages over classes ``1..C-1`` only (the CE term always uses all
    classes).

    ``class_weights`` (length ``num_classes``) weight the CE term as ``nn.CrossEntropyLoss(weight)``
    does, and the Dice classes by a weighted mean ``sum(w_c L_c) / sum(w_c)`` over the included
    classes (TransUNet divides by ``C`` instead; the two agree for unit weights, the default).
    """

    def __init__(
        self,
        num_classes: int,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        include_background: bool = True,
        smooth: float = 1e-5,
        class_weights: Sequence[float] | Tensor | None = None,
        check_targets: bool = True,
    ):
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"CeDiceLoss needs num_classes >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.dice_weight = check_weight("dice_weight", dice_weight)
        self.smooth = check_weight("smooth", smooth)
        if self.ce_weight == 0 and self.dice_weight == 0:
            raise ValueError("ce_weight and dice_weight are both 0: the loss would be constant")
        self.include_background = bool(include_background)
        self.check_targets = bool(check_targets)
        if class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if w.numel() != self.num_classes:
                raise ValueError(
                    f"class_weights has {w.numel()} entries, expected num_classes={self.num_classes}"
                )
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"class_weights must be finite and >= 0, got {w.tolist()}")
            first = 0 if self.include_background else 1
            if w[first:].sum() <= 0:
                raise ValueError("class_weights of the Dice classes sum to 0")
            self.register_buffer("class_weights", w)
        else:
            self.class_weights = None

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, ce_weight={self.ce_weight}, "
            f"dice_weight={self.dice_weight}, include_background={self.include_background}, "
            f"smooth={self.smooth}"
        )

    def _labels(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() < 2:
            raise ValueError(f"logits must be (B, C, ...), got shape {tuple(logits.shape)}")
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} channels, expected num_classes={self.num_classes}"
            )
        expected = (logits.shape[0], *logits.shape[2:])
        if target.dim() == logits.dim() and target.shape[1] == 1:
            target = target.squeeze(1)
        if tuple(target.shape) != expected:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                f"expected integer labels of shape {expected} (or with a channel axis of size 1)"
            )
        if target.is_floating_point():
            if self.check_targets and not torch.equal(target, torch.round(target)):
                bad = target[target != torch.round(target)].flatten()[0].item()
                raise ValueError(f"target holds a non-integer label {bad}; expected class indices")
            target = target.long()
        elif target.dtype == torch.bool:
            target = target.long()
        elif target.dtype != torch.long:
            target = target.long()
        if self.check_targets and target.numel():
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"target holds label {bad}, outside [0, {self.num_classes}) for "
                    f"num_classes={self.num_classes}"
                )
        return target

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        labels = self._labels(logits, target)
        x = compute_dtype(logits)
        loss = x.new_zeros(())
        w = self.class_weights
        if self.ce_weight:
            ce = F.cross_entropy(x, labels, weight=None if w is None else w.to(x.dtype))
            loss = loss + self.ce_weight * ce
        if self.dice_weight:
            probs = torch.softmax(x, dim=1)
            onehot = F.one_hot(labels, self.num_classes).movedim(-1, 1).to(x.dtype)
            dims = [0] + list(range(2, x.dim()))
            inter = (probs * onehot).sum(dims)
            s_sq = (probs * probs).sum(dims)
            t_sq = onehot.sum(dims)  # t is 0/1, so t^2 == t
            per_class = 1.0 - (2.0 * inter + self.smooth) / (s_sq + t_sq + self.smooth)
            first = 0 if self.include_background else 1
            per_class = per_class[first:]
            if w is None:
                dice = per_class.mean()
            else:
                wc = w[first:].to(x.dtype)
                dice = (per_class * wc).sum() / wc.sum()
            loss = loss + self.dice_weight * dice
        return loss


# Registrations. CE needs at least two class channels, so ce and ce_dice are declared multiclass:
# on a one-channel (binary) task the engine refuses them as a config error rather than letting
# CeDiceLoss fail. dice takes either: BceDiceLoss's Dice on one channel, CeDiceLoss's otherwise.


@register_loss("ce_dice", task="multiclass", options=("ce_weight", "dice_weight", "include_background"))
def _ce_dice(num_classes: int, **kw: Any) -> nn.Module:
    return CeDiceLoss(num_classes, **kw)


@register_loss("ce", task="multiclass", options=("ce_weight",))
def _ce(num_classes: int, **kw: Any) -> nn.Module:
    return CeDiceLoss(num_classes, ce_weight=kw.pop("ce_weight", 1.0), dice_weight=0.0, **kw)


@register_loss("dice", options=("dice_weight",))
def _dice(num_classes: int, **kw: Any) -> nn.Module:
    """Soft Dice alone: the BceDice Dice for ``num_classes == 1``, the CeDice Dice otherwise."""
    if num_classes == 1:
        return BceDiceLoss(bce_weight=0.0, dice_weight=kw.pop("dice_weight", 1.0), **kw)
    return CeDiceLoss(num_classes, ce_weight=0.0, dice_weight=kw.pop("dice_weight", 1.0), **kw)
