"""Small generic building blocks shared by vmbench's models and the baselines (no timm dependency).

timm-like pieces whose behaviour a reproduced checkpoint or training run depends on: stochastic
depth (:class:`DropPath`, with timm's semantics), the truncated-normal initialiser
(:func:`trunc_normal_`, with timm's absolute cut-offs) and the Linear/LayerNorm init rule built on
it (:func:`init_trunc_normal_`), the transformer :class:`Mlp`, :func:`to_2tuple`, the channels-last
pixel shuffle of the Swin-style patch-expanding layers (:func:`pixel_shuffle_nhwc`), a block list
run with optional activation checkpointing (:func:`run_blocks`) and the image-batch check every
2-D model starts its forward with (:func:`check_image_channels`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from vmbench.errors import ModelInputError

__all__ = [
    "DropPath",
    "Mlp",
    "check_image_channels",
    "drop_path",
    "init_trunc_normal_",
    "pixel_shuffle_nhwc",
    "run_blocks",
    "to_2tuple",
    "trunc_normal_",
]


def to_2tuple(value: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``(value, value)`` for an int, the pair itself for an ``(H, W)`` sequence (timm's ``to_2tuple``)."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ModelInputError(f"{name} must be an int or an (H, W) pair, got {value!r}")
    return pair  # type: ignore[return-value]


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


def init_trunc_normal_(module: nn.Module, std: float = 0.02) -> None:
    """The ViT/Swin/VMamba init rule for one module (use with ``model.apply``).

    ``nn.Linear``: weight trunc-normal(``std``) (:func:`trunc_normal_`), bias 0; ``nn.LayerNorm``:
    weight 1, bias 0; every other module (convolutions, raw parameters) keeps its own init, as in
    timm's ViT ``_init_weights``, Swin-UNet's ``SwinTransformerSys._init_weights`` and VMamba's
    ``VSSM._init_weights``.
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Mlp(nn.Module):
    """Transformer MLP: ``fc1`` -> GELU -> dropout -> ``fc2`` -> dropout (timm ``Mlp``; keys ``fc1``, ``fc2``).

    The output width equals ``in_features``; one dropout module serves both places, as in timm 0.4.
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def pixel_shuffle_nhwc(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, H, W, s*s*C) -> (B, s*H, s*W, C), channels split as ``(p1 p2 c)`` with p1 (row offset) slowest.

    einops ``'b h w (p1 p2 c) -> b (h p1) (w p2) c'``: the patch-expanding layers of VMamba/VM-UNet
    and Swin-UNet. The split order fixes which rows of the preceding Linear feed which output
    pixel, so it is part of their checkpoint format.
    """
    b, h, w, channels = x.shape
    c = channels // (scale * scale)
    x = x.reshape(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * scale, w * scale, c)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, use_checkpoint: bool = False) -> torch.Tensor:
    """Apply ``blocks`` in order; with ``use_checkpoint`` (and a graph to build) each block's
    activations are recomputed in the backward instead of stored (``torch.utils.checkpoint``)."""
    for block in blocks:
        if use_checkpoint and x.requires_grad:
            x = torch_checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


def check_image_channels(x: object, in_chans: int, model: str) -> torch.Tensor:
    """``x`` if it is a 4-D (batch, in_chans, H, W) tensor; a 1-channel batch for a 3-channel model
    comes back repeated to 3 channels (an expanded view: the official wrappers' ``repeat(1, 3, 1, 1)``
    without the copy). Anything else raises :class:`ModelInputError` naming ``model``. Each model
    checks its own size rule afterwards.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelInputError(f"{model} expects a 4-D (batch, channels, height, width) tensor, got {shape}")
    channels = x.shape[1]
    if channels == in_chans:
        return x
    if channels == 1 and in_chans == 3:
        return x.expand(-1, 3, -1, -1)
    also = " (or 1, repeated to 3)" if in_chans == 3 else ""
    raise ModelInputError(
        f"{model} was built for {in_chans} input channels{also}, got an input with {channels} channels "
        f"(shape {tuple(x.shape)})"
    )
