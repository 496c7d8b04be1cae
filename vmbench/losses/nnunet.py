"""nnU-Net's training losses: Dice + cross-entropy, and deep supervision against downsampled targets.

Dice + cross-entropy (MIC-DKFZ/nnUNet@0e495086, v2.8.1: ``nnUNetTrainer._build_loss``,
``training/loss/compound_losses.py``, ``training/loss/dice.py``). nnU-Net adds cross-entropy and the
**negative** soft Dice, ``loss = w_ce * CE + w_dice * (-dice)`` (weights 1 and 1), with
``MemoryEfficientSoftDiceLoss``: per class ``(2 sum(p y) + smooth) / max(sum(p) + sum(y) + smooth, 1e-8)``
with ``smooth = 1e-5``, the sums taken over the whole batch at once (``batch_dice``, true in every 2d
plan), then the mean over classes. Being ``-dice`` rather than ``1 - dice``, the loss is 1 lower
than a ``1 - dice`` form (same gradients) and can be negative.

* :class:`NnUNetDiceCELoss` (``nnunet_dice_ce``), ``DC_and_CE_loss``: class logits, softmax, Dice
  over the foreground classes only (``do_bg=False``), cross-entropy over all.
* :class:`NnUNetDiceBCELoss` (``nnunet_dice_bce``), ``DC_and_BCE_loss``, nnU-Net's region form
  for sigmoid outputs: BCE with logits (mean over every element) and the Dice of every output
  channel (``do_bg=True``: a region output has no background channel). vmbench's binary tasks have
  one logit channel, the lesion region.

Deep supervision. nnU-Net's decoders (``nnunet``, ``resenc-unet-m``, ``umamba-bot``, ``umamba-enc``)
return one logit map per decoder stage, full resolution first (256, 128, ..., 8 for a 256x256 patch).
nnU-Net does not upsample them: its data loader downsamples the segmentation to every output's
size (``DownsampleSegForDSTransform``, nearest-exact interpolation; MIC-DKFZ/nnUNet@0e495086 with
batchgeneratorsv2) and ``DeepSupervisionWrapper`` sums ``weights[i] * loss(outputs[i],
targets[i])`` over the outputs whose weight is not 0. The weights are ``1/2**i`` with the lowest
resolution's set to 0, normalised (:func:`vmbench.models.nnunet_plan.deep_supervision_weights`).

:class:`DownsampledDeepSupervisionLoss` does the same with one full-resolution target, around any
loss (the two above included). Compare :class:`vmbench.losses.DeepSupervisionLoss` (TransFuse),
which brings smaller outputs up to the target by interpolating their logits: a different loss for
the same outputs. A model says which it was trained with through
``deep_supervision_targets = "downsample"``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vmbench.losses._common import compute_dtype
from vmbench.losses.binary import BceDiceLoss
from vmbench.losses.deep_supervision import DeepSupervisionLoss
from vmbench.losses.multiclass import CeDiceLoss
from vmbench.losses.registry import register_loss

__all__ = [
    "DownsampledDeepSupervisionLoss",
    "NnUNetDiceBCELoss",
    "NnUNetDiceCELoss",
    "downsample_target",
    "nnunet_soft_dice",
]


def nnunet_soft_dice(probs: Tensor, onehot: Tensor, batch_dice: bool = True, smooth: float = 1e-5) -> Tensor:
    """nnU-Net's ``MemoryEfficientSoftDiceLoss`` score (positive; the loss is its negative).

    ``probs`` and ``onehot`` are ``(B, C, *spatial)`` of the channels scored. Per sample and channel
    ``sum(p y)``, ``sum(p)`` and ``sum(y)`` over the spatial axes; with ``batch_dice`` these are
    summed over the batch before the ratio ``(2 I + smooth) / max(S_p + S_y + smooth, 1e-8)``;
    the result is the mean of the ratios.
    """
    axes = tuple(range(2, probs.dim()))
    intersect, sum_pred, sum_gt = (probs * onehot).sum(axes), probs.sum(axes), onehot.sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    return ((2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, min=1e-8)).mean()


class NnUNetDiceCELoss(CeDiceLoss):
    """nnU-Net's ``DC_and_CE_loss``: ``ce_weight * CE + dice_weight * (-dice)`` (see the module docstring).

    ``logits`` ``(B, C, *spatial)``, ``target`` integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)``
    (checked as :class:`vmbench.losses.CeDiceLoss` checks them). The Dice leaves class 0 out.
    """

    def __init__(self, num_classes: int, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 batch_dice: bool = True, smooth: float = 1e-5, check_targets: bool = True):
        super().__init__(num_classes, ce_weight=ce_weight, dice_weight=dice_weight, include_background=False,
                         smooth=smooth, check_targets=check_targets)
        self.batch_dice = bool(batch_dice)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, batch_dice={self.batch_dice}"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        labels = self._labels(logits, target)
        x = compute_dtype(logits)
        loss = x.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(x, labels)
        if self.dice_weight:
            probs = torch.softmax(x, dim=1)[:, 1:]
            onehot = F.one_hot(labels, self.num_classes).movedim(-1, 1)[:, 1:].to(x.dtype)
            loss = loss - self.dice_weight * nnunet_soft_dice(probs, onehot, self.batch_dice, self.smooth)
        return loss


class NnUNetDiceBCELoss(BceDiceLoss):
    """nnU-Net's ``DC_and_BCE_loss`` (region form): ``bce_weight * BCE + dice_weight * (-dice)``.

    ``logits`` ``(B, C, *spatial)`` with one channel per region (vmbench's binary tasks: one),
    ``target`` the 0/1 regions with as many elements per sample. Every channel is scored.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, batch_dice: bool = True,
                 smooth: float = 1e-5):
        super().__init__(bce_weight=bce_weight, dice_weight=dice_weight, smooth=smooth)
        self.batch_dice = bool(batch_dice)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, batch_dice={self.batch_dice}"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() < 3:
            raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
        x, t = self._pair(logits, target)
        loss = x.new_zeros(())
        if self.bce_weight:
            loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(x, t)
        if self.dice_weight:
            loss = loss - self.dice_weight * nnunet_soft_dice(torch.sigmoid(x), t, self.batch_dice, self.smooth)
        return loss


def downsample_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """``target`` brought down to the spatial ``size`` by nearest-exact interpolation.

    ``target`` is ``(B, *spatial)`` labels or ``(B, C, *spatial)`` masks; its trailing
    ``len(size)`` axes are spatial. The dtype is kept (integer labels are interpolated as floats,
    as batchgeneratorsv2 does, and converted back); labels stay labels, never blends. A size larger
    than the target's along any axis is a ``ValueError``.
    """
    size = tuple(int(s) for s in size)
    nsp = len(size)
    if nsp < 1 or target.dim() < nsp + 1:
        raise ValueError(f"cannot bring target {tuple(target.shape)} to spatial size {size}")
    have = tuple(target.shape[-nsp:])
    if have == size:
        return target
    if any(s > h for s, h in zip(size, have)):
        raise ValueError(
            f"deep-supervision output size {size} is larger than the target's {have} along some axis; "
            "outputs must be at the target resolution or smaller"
        )
    lead = target.shape[:-nsp]
    flat = target.reshape(-1, 1, *have)  # interpolate needs (N, C, *spatial)
    small = F.interpolate(flat.float(), size=size, mode="nearest-exact")
    return small.to(target.dtype).reshape(*lead, *size)


class DownsampledDeepSupervisionLoss(DeepSupervisionLoss):
    """``sum_i weights[i] * base_loss(outputs[i], downsample_target(target, outputs[i] size))``.

    Outputs whose weight is 0 are not computed (nnU-Net's ``DeepSupervisionWrapper``); their
    entry in ``last_terms`` is NaN. ``outputs`` is a tuple or list with one entry per weight.
    """

    def __init__(self, base_loss: Callable[[Tensor, Tensor], Tensor], weights: Sequence[float]):
        super().__init__(base_loss, weights)
        if not any(self.weights):
            raise ValueError(f"deep-supervision weights {self.weights} are all 0: the loss would be constant")

    def forward(self, outputs: Sequence[Tensor], target: Tensor) -> Tensor:
        self._check_outputs(outputs)
        total = None
        terms = []
        for weight, out in zip(self.weights, outputs):
            if weight == 0:
                terms.append(torch.full((), float("nan")))
                continue
            term = self.base_loss(out, downsample_target(target, out.shape[2:]))
            terms.append(term.detach())
            total = weight * term if total is None else total + weight * term
        self.last_terms = tuple(terms)
        return total


# Registrations: nnU-Net's trainer passes its two weights; batch_dice and smooth keep nnU-Net's
# values (reachable from Python through build_loss keywords, not from the loss: section).


@register_loss("nnunet_dice_ce", task="multiclass", options=("ce_weight", "dice_weight"))
def _nnunet_dice_ce(num_classes: int, **kw: Any) -> nn.Module:
    return NnUNetDiceCELoss(num_classes, **kw)


@register_loss("nnunet_dice_bce", task="binary", options=("bce_weight", "dice_weight"))
def _nnunet_dice_bce(num_classes: int, **kw: Any) -> nn.Module:
    return NnUNetDiceBCELoss(**kw)
