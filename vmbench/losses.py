"""Training losses for the benchmark.

Every model in vmbench returns **logits**; each loss here applies sigmoid or softmax itself.

Binary tasks (ISIC, one output channel)
    :class:`BceDiceLoss` is VM-UNet's ``BceDiceLoss(wb=1, wd=1)``: the mean binary cross-entropy
    over all pixels plus a soft Dice loss on sigmoid probabilities,
    ``1 - mean_b (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` per sample, ``smooth = 1``.
    The official code applies ``nn.BCELoss`` to sigmoid outputs; here the BCE term is taken on
    the logits (``binary_cross_entropy_with_logits``), which is the same number for moderate
    logits and stays exact where ``BCELoss`` clamps ``log`` at -100 (|logit| >~ 17 in float32).

Multi-class tasks (Synapse, ``num_classes`` output channels)
    :class:`CeDiceLoss` is VM-UNet's / TransUNet's ``CeDiceLoss``: cross-entropy on the logits
    plus TransUNet's ``DiceLoss`` on softmax probabilities, per class
    ``1 - (2 sum(s t) + 1e-5) / (sum(s^2) + sum(t^2) + 1e-5)`` over the whole batch, averaged
    over classes **including background** (as every paper trained it).

Deep supervision
    :class:`DeepSupervisionLoss` sums a base loss over several outputs with fixed weights.
    :func:`transfuse_loss` is TransFuse's ``0.5 L(map_2) + 0.3 L(map_1) + 0.2 L(map_x)``
    written in the order the model returns its maps, ``(map_x, map_1, map_2)``, i.e. weights
    ``(0.2, 0.3, 0.5)``. Its default base loss is :class:`StructureLoss` (PraNet's weighted
    BCE + weighted IoU that TransFuse trains with).

nnU-Net
    ``nnunet_dice_ce`` (class logits) and ``nnunet_dice_bce`` (one logit, nnU-Net's region form) are
    nnU-Net's trainer losses, defined in :mod:`vmbench.losses_ds` beside its deep supervision.

Factories
    :func:`build_loss` builds a loss by name (``bce_dice``, ``ce_dice``, ``bce``, ``ce``, ``dice``,
    ``structure``, ``nnunet_dice_ce``, ``nnunet_dice_bce``); :func:`default_loss_for` picks the paper
    loss for a task.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BceDiceLoss",
    "CeDiceLoss",
    "StructureLoss",
    "DeepSupervisionLoss",
    "TRANSFUSE_WEIGHTS",
    "transfuse_loss",
    "build_loss",
    "default_loss_for",
    "list_losses",
    "loss_key",
    "loss_task",
    "register_loss",
]


def _compute_dtype(x: Tensor) -> Tensor:
    """Sums over whole images are done in float32 at least (half precision loses them)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Binary: BCE + Dice
# --------------------------------------------------------------------------------------------


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
        self.bce_weight = _check_weight("bce_weight", bce_weight)
        self.dice_weight = _check_weight("dice_weight", dice_weight)
        self.smooth = _check_weight("smooth", smooth)
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
        x = _compute_dtype(logits)
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


# --------------------------------------------------------------------------------------------
# Multi-class: CE + Dice
# --------------------------------------------------------------------------------------------


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
        self.ce_weight = _check_weight("ce_weight", ce_weight)
        self.dice_weight = _check_weight("dice_weight", dice_weight)
        self.smooth = _check_weight("smooth", smooth)
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
        x = _compute_dtype(logits)
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


# --------------------------------------------------------------------------------------------
# TransFuse / PraNet structure loss
# --------------------------------------------------------------------------------------------


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
        self.edge_weight = _check_weight("edge_weight", edge_weight)
        self.weighted_bce = weighted_bce

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 4:
            raise ValueError(f"StructureLoss expects (B, C, H, W) logits, got {tuple(logits.shape)}")
        if target.dim() == 3:
            target = target.unsqueeze(1)
        if target.shape != logits.shape:
            raise ValueError(f"target {tuple(target.shape)} must match logits {tuple(logits.shape)}")
        x = _compute_dtype(logits)
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


# --------------------------------------------------------------------------------------------
# Deep supervision
# --------------------------------------------------------------------------------------------

_INTERP_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class DeepSupervisionLoss(nn.Module):
    """Weighted sum ``sum_i weights[i] * base_loss(outputs[i], target)`` over several heads.

    ``outputs`` is a tuple or list of logits, in the order the model returns them, with exactly
    ``len(weights)`` entries (``ValueError`` otherwise). An output at the target's spatial size is
    used as is; a **smaller** one is upsampled to the target size with (bi/tri)linear
    interpolation of its logits (``align_corners=False``) before the base loss; a larger one, or
    one smaller along some axes and larger along others, raises ``ValueError`` (the target is
    never resized). The target's spatial size is its trailing ``output.dim() - 2`` axes, so
    ``(B, H, W)`` label maps and ``(B, 1, H, W)`` masks both work.

    ``last_terms`` holds the detached per-output losses of the latest call (for logging).
    """

    def __init__(
        self,
        base_loss: Callable[[Tensor, Tensor], Tensor],
        weights: Sequence[float] = (0.5, 0.3, 0.2),
    ):
        super().__init__()
        if not callable(base_loss):
            raise TypeError(f"base_loss must be callable, got {type(base_loss).__name__}")
        weights = tuple(_check_weight("deep-supervision weight", w) for w in weights)
        if not weights:
            raise ValueError("weights must not be empty")
        self.base_loss = base_loss
        self.weights = weights
        self.last_terms: tuple[Tensor, ...] = ()

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

    @staticmethod
    def _to_target_size(out: Tensor, target: Tensor) -> Tensor:
        nsp = out.dim() - 2
        if nsp < 1 or target.dim() < nsp:
            raise ValueError(
                f"cannot match output {tuple(out.shape)} to target {tuple(target.shape)}: "
                "outputs must be (B, C, *spatial)"
            )
        size = tuple(target.shape[-nsp:])
        have = tuple(out.shape[2:])
        if have == size:
            return out
        if all(h <= s for h, s in zip(have, size)):
            mode = _INTERP_MODES.get(nsp)
            if mode is None:
                raise ValueError(f"cannot resize {nsp}-D outputs")
            return F.interpolate(out, size=size, mode=mode, align_corners=False)
        raise ValueError(
            f"output spatial size {have} is larger than the target's {size} along some axis; "
            "deep-supervision outputs must be at the target resolution or smaller"
        )

    def forward(self, outputs: Sequence[Tensor], target: Tensor) -> Tensor:
        if isinstance(outputs, Tensor) or not isinstance(outputs, (tuple, list)):
            raise TypeError(
                f"DeepSupervisionLoss expects a tuple or list of {len(self.weights)} outputs, "
                f"got {type(outputs).__name__}"
            )
        if len(outputs) != len(self.weights):
            raise ValueError(
                f"got {len(outputs)} outputs but {len(self.weights)} weights {self.weights}; "
                "the number of weights must match the number of model outputs"
            )
        total = None
        terms = []
        for w, out in zip(self.weights, outputs):
            term = self.base_loss(self._to_target_size(out, target), target)
            terms.append(term.detach())
            total = w * term if total is None else total + w * term
        self.last_terms = tuple(terms)
        return total


#: TransFuse (``train_isic.py``): ``loss = 0.5 L(map_2) + 0.3 L(map_1) + 0.2 L(map_x)``; the model
#: returns ``(map_x, map_1, map_2)`` (``lateral_map_4, lateral_map_3, lateral_map_2``) and
#: inference uses ``map_2``, so the weights in output order are:
TRANSFUSE_WEIGHTS: tuple[float, float, float] = (0.2, 0.3, 0.5)


def transfuse_loss(base_loss: Callable[[Tensor, Tensor], Tensor] | None = None) -> DeepSupervisionLoss:
    """TransFuse's deep supervision: ``0.2 L(map_x) + 0.3 L(map_1) + 0.5 L(map_2)``.

    Takes the model's output tuple ``(map_x, map_1, map_2)`` as returned (all three are already
    upsampled to the input size by TransFuse's heads). ``base_loss`` defaults to
    :class:`StructureLoss`, the loss of the official training script.
    """
    return DeepSupervisionLoss(StructureLoss() if base_loss is None else base_loss, TRANSFUSE_WEIGHTS)


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------

_LOSSES: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str | None] = {}  # "binary" (one logit), "multiclass" (class logits), None: either


def register_loss(name: str, task: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory(num_classes, **kwargs) -> nn.Module`` under ``name``; ``task``: the outputs
    it is written for, ``"binary"`` (one logit channel) or ``"multiclass"`` (class logits), None for either."""

    key = loss_key(name)

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if key in _LOSSES:
            raise ValueError(f"loss {key!r} is already registered")
        _LOSSES[key] = factory
        _TASKS[key] = task
        return factory

    return deco


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def loss_task(name: str) -> str | None:
    """The task a registered loss is written for (see :func:`register_loss`), None for either."""
    return _TASKS[loss_key(name)]


def loss_key(name: str) -> str:
    """The registry key of a loss name: case-insensitive, ``-`` the same as ``_``."""
    return str(name).strip().lower().replace("-", "_")


def _require_binary(name: str, num_classes: int) -> None:
    if num_classes != 1:
        raise ValueError(
            f"loss {name!r} is binary and expects num_classes=1 (one logit channel), got "
            f"{num_classes}; use 'ce_dice' for multi-class outputs"
        )


@register_loss("bce_dice", task="binary")
def _bce_dice(num_classes: int, **kw: Any) -> nn.Module:
    _require_binary("bce_dice", num_classes)
    return BceDiceLoss(**kw)


@register_loss("bce", task="binary")
def _bce(num_classes: int, **kw: Any) -> nn.Module:
    _require_binary("bce", num_classes)
    return BceDiceLoss(bce_weight=kw.pop("bce_weight", 1.0), dice_weight=0.0, **kw)


@register_loss("ce_dice")
def _ce_dice(num_classes: int, **kw: Any) -> nn.Module:
    return CeDiceLoss(num_classes, **kw)


@register_loss("ce")
def _ce(num_classes: int, **kw: Any) -> nn.Module:
    return CeDiceLoss(num_classes, ce_weight=kw.pop("ce_weight", 1.0), dice_weight=0.0, **kw)


@register_loss("dice")
def _dice(num_classes: int, **kw: Any) -> nn.Module:
    """Soft Dice alone: the BceDice Dice for ``num_classes == 1``, the CeDice Dice otherwise."""
    if num_classes == 1:
        return BceDiceLoss(bce_weight=0.0, dice_weight=kw.pop("dice_weight", 1.0), **kw)
    return CeDiceLoss(num_classes, ce_weight=0.0, dice_weight=kw.pop("dice_weight", 1.0), **kw)


@register_loss("structure", task="binary")
def _structure(num_classes: int, **kw: Any) -> nn.Module:
    _require_binary("structure", num_classes)
    return StructureLoss(**kw)


# nnU-Net's losses live beside its deep supervision (vmbench.losses_ds, which imports this module).
@register_loss("nnunet_dice_ce", task="multiclass")
def _nnunet_dice_ce(num_classes: int, **kw: Any) -> nn.Module:
    if num_classes == 1:
        raise ValueError("loss 'nnunet_dice_ce' needs class logits (num_classes >= 2); one logit channel is "
                         "nnU-Net's region form: use 'nnunet_dice_bce'")
    from vmbench.losses_ds import NnUNetDiceCELoss

    return NnUNetDiceCELoss(num_classes, **kw)


@register_loss("nnunet_dice_bce", task="binary")
def _nnunet_dice_bce(num_classes: int, **kw: Any) -> nn.Module:
    _require_binary("nnunet_dice_bce", num_classes)
    from vmbench.losses_ds import NnUNetDiceBCELoss

    return NnUNetDiceBCELoss(**kw)


def build_loss(
    name: str,
    num_classes: int,
    deep_supervision: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered loss: ``build_loss("ce_dice", 9)``, ``build_loss("bce_dice", 1)``.

    Names are case-insensitive (``-`` and ``_`` are the same). ``kwargs`` go to the loss class.
    ``deep_supervision=(w_1, ..., w_k)`` wraps the loss in :class:`DeepSupervisionLoss`.
    An unknown name raises ``ValueError`` listing the known names.
    """
    key = loss_key(name)
    if key not in _LOSSES:
        close = difflib.get_close_matches(key, _LOSSES, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown loss {name!r}{hint}; known losses: {', '.join(list_losses())}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    loss = _LOSSES[key](int(num_classes), **kwargs)
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
