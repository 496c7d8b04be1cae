"""Deep supervision with heads brought up to the target (TransFuse).

:class:`DeepSupervisionLoss` sums a base loss over several outputs with fixed weights.
:func:`transfuse_loss` is TransFuse's ``0.5 L(map_2) + 0.3 L(map_1) + 0.2 L(map_x)``
written in the order the model returns its maps, ``(map_x, map_1, map_2)``, i.e. weights
``(0.2, 0.3, 0.5)``. Its default base loss is :class:`~vmbench.losses.binary.StructureLoss`
(PraNet's weighted BCE + weighted IoU that TransFuse trains with).

nnU-Net's deep supervision compares each head with the target brought *down* to it instead:
:class:`vmbench.losses.nnunet.DownsampledDeepSupervisionLoss`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from vmbench.losses._common import check_weight
from vmbench.losses.binary import StructureLoss

__all__ = ["TRANSFUSE_WEIGHTS", "DeepSupervisionLoss", "transfuse_loss"]

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
        weights = tuple(check_weight("deep-supervision weight", w) for w in weights)
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

    def _check_outputs(self, outputs: Sequence[Tensor]) -> None:
        """One output per weight, as a tuple or list (a bare tensor means deep supervision is off)."""
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

    def forward(self, outputs: Sequence[Tensor], target: Tensor) -> Tensor:
        self._check_outputs(outputs)
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
