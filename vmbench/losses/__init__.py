"""Training losses for the benchmark; importing this package registers them.

Every model in vmbench returns **logits**; each loss here applies sigmoid or softmax itself.

Modules (imports run down this list, never up):

``registry``
    :func:`register_loss` (name, task, ``loss:`` configuration keys), :func:`loss_info`,
    :func:`list_losses`: the loss table, a :class:`vmbench.registry.Registry` like the model and
    dataset tables.
``binary``
    :class:`BceDiceLoss` (VM-UNet's BCE + Dice), :class:`StructureLoss` (PraNet / TransFuse);
    registers ``bce_dice``, ``bce``, ``structure``.
``multiclass``
    :class:`CeDiceLoss` (VM-UNet's / TransUNet's CE + Dice, background included); registers
    ``ce_dice``, ``ce``, ``dice`` (the Dice of either).
``deep_supervision``
    :class:`DeepSupervisionLoss`, :func:`transfuse_loss`: heads brought up to the target (TransFuse).
``nnunet``
    nnU-Net's trainer losses (``nnunet_dice_ce``, ``nnunet_dice_bce``) and its deep supervision
    against downsampled targets, :class:`DownsampledDeepSupervisionLoss`.
``build``
    :func:`build_loss` by name, :func:`default_loss_for` (the paper loss of a task).
"""

from __future__ import annotations

from vmbench.losses.registry import (
    LOSS_CONFIG_KEYS,
    LOSSES,
    LossInfo,
    list_losses,
    loss_info,
    loss_key,
    loss_task,
    losses_for,
    register_loss,
)
from vmbench.losses.binary import BceDiceLoss, StructureLoss
from vmbench.losses.multiclass import CeDiceLoss
from vmbench.losses.deep_supervision import TRANSFUSE_WEIGHTS, DeepSupervisionLoss, transfuse_loss
from vmbench.losses.nnunet import (
    DownsampledDeepSupervisionLoss,
    NnUNetDiceBCELoss,
    NnUNetDiceCELoss,
    downsample_target,
    nnunet_soft_dice,
)
from vmbench.losses.build import build_loss, default_loss_for

__all__ = [
    "LOSSES",
    "LOSS_CONFIG_KEYS",
    "TRANSFUSE_WEIGHTS",
    "BceDiceLoss",
    "CeDiceLoss",
    "DeepSupervisionLoss",
    "DownsampledDeepSupervisionLoss",
    "LossInfo",
    "NnUNetDiceBCELoss",
    "NnUNetDiceCELoss",
    "StructureLoss",
    "build_loss",
    "default_loss_for",
    "downsample_target",
    "list_losses",
    "loss_info",
    "loss_key",
    "loss_task",
    "losses_for",
    "nnunet_soft_dice",
    "register_loss",
    "transfuse_loss",
]
