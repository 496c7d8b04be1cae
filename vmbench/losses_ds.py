"""Deep supervision against downsampled targets, as nnU-Net trains its U-Nets.

nnU-Net's decoders (``nnunet``, ``resenc-unet-m``, ``umamba-bot``, ``umamba-enc``) return one
logit map per decoder stage, full resolution first (256, 128, ..., 8 for a 256x256 patch).
nnU-Net does not upsample them: its data loader downsamples the segmentation to every output's
size (``DownsampleSegForDSTransform``, nearest-exact interpolation; MIC-DKFZ/nnUNet@0e495086 with
batchgeneratorsv2) and ``DeepSupervisionWrapper`` sums ``weights[i] * loss(outputs[i],
targets[i])`` over the outputs whose weight is not 0. The weights are ``1/2**i`` with the lowest
resolution's set to 0, normalised (:func:`vmbench.models.nnunet_plan.deep_supervision_weights`).

:class:`DownsampledDeepSupervisionLoss` does the same with one full-resolution target. Compare
:class:`vmbench.losses.DeepSupervisionLoss` (TransFuse), which brings smaller outputs up to the
target by interpolating their logits: a different loss for the same outputs. A model says which
it was trained with through ``deep_supervision_targets = "downsample"``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vmbench.losses import DeepSupervisionLoss

__all__ = ["DownsampledDeepSupervisionLoss", "downsample_target"]


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
        if isinstance(outputs, Tensor) or not isinstance(outputs, (tuple, list)):
            raise TypeError(
                f"{type(self).__name__} expects a tuple or list of {len(self.weights)} outputs, "
                f"got {type(outputs).__name__}"
            )
        if len(outputs) != len(self.weights):
            raise ValueError(
                f"got {len(outputs)} outputs but {len(self.weights)} weights {self.weights}; "
                "the number of weights must match the number of model outputs"
            )
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
