"""What a model's forward returns, read one way everywhere.

A model returns one logits tensor, or in ``train()`` mode a tuple of deep-supervision heads with
their loss weights in the model's ``deep_supervision_weights``. Two layouts exist: TransFuse's
heads are all at the input size and the last is the prediction (``(map_x, map_1, map_2)``; the
official ``test_isic.py`` of Rayicer/TransFuse predicts with ``map_2``), and each is compared with
the target brought up to it; nnU-Net's decoder lists full resolution first, then each coarser
scale, and each is compared with the target brought down to it (models that declare
``deep_supervision_targets = "downsample"``; MIC-DKFZ/nnUNet ``DeepSupervisionWrapper``).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

from vmbench.losses import DeepSupervisionLoss, DownsampledDeepSupervisionLoss

ModelOutput = Union[torch.Tensor, Sequence[torch.Tensor]]

__all__ = ["ModelOutput", "as_float", "final_logits", "supervised_loss"]


def final_logits(output: ModelOutput) -> torch.Tensor:
    """The prediction: the tensor itself, or of a deep-supervision tuple the last head at full
    resolution (TransFuse's ``map_2``; nnU-Net's first output, the only one at full size)."""
    if not isinstance(output, (tuple, list)):
        return output
    full = max(o.shape[2:].numel() for o in output)
    return [o for o in output if o.shape[2:].numel() == full][-1]


def as_float(output: ModelOutput) -> ModelOutput:
    """fp32 copies of every head (losses run in fp32 after an autocast forward)."""
    if isinstance(output, (tuple, list)):
        return tuple(o.float() for o in output)
    return output.float()


def supervised_loss(loss_fn: Callable[..., torch.Tensor], output: ModelOutput, target: torch.Tensor,
                    model: torch.nn.Module) -> torch.Tensor:
    """The loss of one head, or of every head weighted by the model's ``deep_supervision_weights``."""
    if not isinstance(output, (tuple, list)):
        return loss_fn(output, target)
    weights = getattr(model, "deep_supervision_weights", None)
    if weights is None:  # a bug in the model, not in the user's input
        raise TypeError(
            f"{type(model).__name__} returned {len(output)} outputs but declares no deep_supervision_weights"
        )
    if getattr(model, "deep_supervision_targets", None) == "downsample":
        return DownsampledDeepSupervisionLoss(loss_fn, weights)(output, target)
    return DeepSupervisionLoss(loss_fn, weights)(output, target)
