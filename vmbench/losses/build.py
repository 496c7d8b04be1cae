"""Building a loss by name from the registry (:mod:`vmbench.losses.registry`).

Apart from the registry because it wraps losses in :class:`DeepSupervisionLoss`, whose module
imports the binary losses, which import the registry to register: the registry stays below them.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from vmbench.losses.deep_supervision import DeepSupervisionLoss
from vmbench.losses.registry import loss_info, loss_key, losses_for

__all__ = ["build_loss", "default_loss_for"]


def build_loss(
    name: str,
    num_classes: int,
    deep_supervision: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered loss: ``build_loss("ce_dice", 9)``, ``build_loss("bce_dice", 1)``.

    Names are case-insensitive (``-`` and ``_`` are the same). ``kwargs`` go to the loss class.
    ``deep_supervision=(w_1, ..., w_k)`` wraps the loss in :class:`DeepSupervisionLoss`.
    An unknown name raises :class:`vmbench.errors.UnknownNameError` with close matches and the
    known names; a ``num_classes`` that the loss's declared task cannot train, ``ValueError``.
    """
    info = loss_info(name)
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    num_classes = int(num_classes)
    if info.task == "binary" and num_classes != 1:
        raise ValueError(
            f"loss {info.name!r} is binary and expects num_classes=1 (one logit channel), got "
            f"{num_classes}; for class logits use one of {', '.join(losses_for('multiclass'))}"
        )
    if info.task == "multiclass" and num_classes < 2:
        raise ValueError(
            f"loss {info.name!r} needs class logits (num_classes >= 2), got {num_classes}; "
            f"for one logit channel use one of {', '.join(losses_for('binary'))}"
        )
    loss = info.factory(num_classes, **kwargs)
    if deep_supervision is not None:
        loss = DeepSupervisionLoss(loss, deep_supervision)
    return loss


def default_loss_for(task: str, num_classes: int) -> nn.Module:
    """The papers' loss for a task: ``BceDiceLoss()`` for ``"binary"`` (``num_classes == 1``),
    ``CeDiceLoss(num_classes)`` (CE + Dice with background, 1:1) for ``"multiclass"``."""
    task_key = loss_key(task)
    if task_key == "binary":
        return build_loss("bce_dice", num_classes)
    if task_key in ("multiclass", "multi_class"):
        return build_loss("ce_dice", num_classes)
    raise ValueError(f"unknown task {task!r}; expected 'binary' or 'multiclass'")
