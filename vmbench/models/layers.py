"""Small generic building blocks shared by vmbench models (no timm dependency).

Only pieces whose behaviour a reproduced checkpoint or training run depends on live here:
stochastic depth (``DropPath``, with timm's semantics) and the truncated-normal initialiser
(``trunc_normal_``, with timm's absolute cut-offs).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "drop_path", "trunc_normal_"]


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> torch.Tensor:
    """Stochastic depth per sample: zero a whole residual branch for some samples of the batch.

    Matches ``timm.models.layers.drop_path``: one Bernoulli(1 - drop_prob) draw per sample,
    broadcast over all other dimensions, and survivors scaled by 1 / (1 - drop_prob) so the
    expectation is unchanged. Identity in eval mode or when ``drop_prob`` is 0.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        mask.div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Stochastic depth module (timm ``DropPath``); ``drop_prob`` is kept as an attribute.

    Always instantiated, even at rate 0, so that every block's rate can be inspected, as in the
    reference implementations that build ``DropPath(0.0)`` for the first block.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` from N(mean, std²) truncated to the ABSOLUTE interval [a, b].

    timm's ``trunc_normal_`` (used by Swin/VMamba as ``trunc_normal_(w, std=.02)``) keeps the
    default bounds ±2 in absolute units, i.e. ±100 standard deviations at std 0.02: in practice an
    untruncated normal. ``torch.nn.init.trunc_normal_`` has the same signature and algorithm, so
    this is a thin, documented alias rather than a reimplementation.
    """
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)
