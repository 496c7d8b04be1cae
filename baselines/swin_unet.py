"""Swin-UNet (Cao et al., arXiv 2105.05537, ECCV Workshops 2022) as the official code builds it.

Module tree, parameter and buffer names, shapes, initialisation and forward follow the official
``networks/swin_transformer_unet_skip_expand_decoder_sys.py`` and ``networks/vision_transformer.py``
of ``HuCaoFighting/Swin-Unet`` at the pinned commit ``0644419``, so a Swin-UNet checkpoint saved by
the official trainer (``swin_unet.``-prefixed keys, optionally under DataParallel's ``module.``)
loads with ``strict=True`` and Swin-T ImageNet weights load through :func:`load_swin_pretrained`
exactly as the official ``SwinUnet.load_from`` maps them. Paper: Cao et al., arXiv 2105.05537
(Table 1: Synapse results). The pinned commit is the last before the 2024
refactor ``7d160d7``, whose defaults no longer reproduce the published pipeline.

Configuration (``configs/swin_tiny_patch4_window7_224_lite.yaml``, the config ``train.sh`` and the
README use; defaults from ``config.py``): embed 96, **depths
[2, 2, 2, 2]** (the "lite" config; the decoder mirrors ``depths`` and the config's
``DECODER_DEPTHS`` is ignored by the official code), heads [3, 6, 12, 24], window 7, patch 4,
drop path 0.2, mlp ratio 4, qkv bias, no absolute position embedding, patch norm.
Parameters: 27,168,900 with 9 classes, 27,168,132 with 1 class.

State dict (what the official ``trainer.py`` saves through the ``SwinUnet`` wrapper of
``networks/vision_transformer.py``): ``swin_unet.patch_embed.{proj,norm}``,
``swin_unet.layers.{i}.blocks.{j}.{norm1,attn.relative_position_bias_table,
attn.relative_position_index,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``attn_mask`` on the
shifted (odd) blocks of every stage whose grid is larger than the window (a persistent buffer, like
``relative_position_index``), ``layers.{0,1,2}.downsample.{reduction,norm}``, ``norm``,
``layers_up.0.{expand,norm}``, ``layers_up.{1,2,3}.blocks...``, ``layers_up.{1,2}.upsample.{expand,
norm}``, ``concat_back_dim.{1,2,3}``, ``norm_up``, ``up.{expand,norm}``, ``output.weight``.

Differences from the official code, all deliberate:

* Input checks raise :class:`vmbench.errors.ModelInputError` (a ``ValueError``) instead of
  ``assert``: a wrong input size, a build size whose stage grids the windows cannot tile, a wrong
  channel count or a non-4D tensor.
* ``img_size`` may be an ``(H, W)`` pair (the official ``FinalPatchExpand_X4`` needs an int).
* The final expansion scale equals ``patch_size`` (official: always 4, identical for patch 4), so
  the output always has the input's size.
* The decoder indexes skips as ``num_layers - 1 - j`` (official: ``3 - j``; identical for 4 stages).
* :func:`load_swin_pretrained` reads with ``weights_only=True``, skips shape mismatches with a
  report, and strips Swin-UNet checkpoint prefixes by name instead of slicing 17 characters.
* No dependency on timm: ``DropPath``, ``Mlp``, ``trunc_normal_`` and the Linear/LayerNorm init come
  from :mod:`vmbench.models.layers` (timm semantics).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import torch
from torch import nn

from vmbench.checkpoints import CheckpointFormatError, describe, is_state_dict, read_checkpoint
from vmbench.errors import ModelInputError
from vmbench.models.layers import (
    DropPath,
    Mlp,
    check_image_channels,
    init_trunc_normal_,
    pixel_shuffle_nhwc,
    run_blocks,
    to_2tuple,
    trunc_normal_,
)
from vmbench.models.loading import inner_module, shape_mismatch, state_dict_in
from vmbench.registry import PublishedResult, register_model

__all__ = [
    "BasicLayer",
    "BasicLayerUp",
    "CheckpointFormatError",
    "FinalPatchExpandX4",
    "PAPER",
    "PatchEmbed",
    "PatchExpand",
    "PatchMerging",
    "SwinPretrainedReport",
    "SwinTransformerBlock",
    "SwinTransformerSys",
    "SwinUnet",
    "WindowAttention",
    "load_swin_pretrained",
    "load_swin_unet_checkpoint",
    "relative_position_index",
    "shifted_window_mask",
    "stage_geometry",
    "swin_unet",
    "window_partition",
    "window_reverse",
]

log = logging.getLogger(__name__)

PAPER = (
    "Cao, Wang, Chen, Jiang, Zhang, Tian, Wang. Swin-Unet: Unet-like Pure Transformer for Medical "
    "Image Segmentation. ECCV 2022 Workshops (MCV), LNCS 13803; arXiv:2105.05537"
)

MASK_VALUE = -100.0  # the official code fills cross-region attention logits with -100, not -inf


# --------------------------------------------------------------------------------------------
# Windows.
# --------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window, window, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window, window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """(Wh*Ww, Wh*Ww) int64 index into the (2Wh-1)(2Ww-1) bias table for every query/key pair.

    For query (hq, wq) and key (hk, wk): ``(hq - hk + Wh - 1) * (2 Ww - 1) + (wq - wk + Ww - 1)``.
    """
    wh, ww = window
    rows = torch.arange(wh).repeat_interleave(ww)  # row of each flattened token
    cols = torch.arange(ww).repeat(wh)
    d_rows = rows[:, None] - rows[None, :] + (wh - 1)
    d_cols = cols[:, None] - cols[None, :] + (ww - 1)
    return d_rows * (2 * ww - 1) + d_cols


def shifted_window_mask(resolution: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(nW, window², window²) additive mask for SW-MSA: 0 within a region, -100 across regions.

    After the cyclic shift by ``-shift``, the grid splits along each axis into three bands
    ``[0, H - window)``, ``[H - window, H - shift)``, ``[H - shift, H)``; tokens of a window may
    attend to each other only if they lie in the same band along both axes.
    """
    h, w = resolution

    def bands(n: int) -> torch.Tensor:
        band = torch.zeros(n, dtype=torch.long)
        band[n - window :] = 1
        band[n - shift :] = 2
        return band

    region = (bands(h)[:, None] * 3 + bands(w)[None, :]).to(torch.float32)  # (H, W) region ids
    windows = window_partition(region.view(1, h, w, 1), window).reshape(-1, window * window)
    differs = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, MASK_VALUE)


# --------------------------------------------------------------------------------------------
# Swin blocks.
# --------------------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    Keys: ``relative_position_bias_table`` ((2Wh-1)(2Ww-1), heads), the persistent buffer
    ``relative_position_index``, ``qkv`` (C -> 3C), ``proj``.
    """

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B * nW, N, C) window tokens; ``mask``: (nW, N, N) additive mask or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B*nW, heads, N, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """Pre-norm (S)W-MSA + MLP block on a fixed (H, W) token grid.

    As in the official code, a grid no larger than the window in its smaller side gets one window
    covering it and no shift. A shifted block registers its mask as the persistent buffer
    ``attn_mask``; an unshifted one registers ``None`` (so no state-dict entry).
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= window_size:
            window_size, shift_size = min(self.input_resolution), 0
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size

        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, (window_size, window_size), num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        mask = shifted_window_mask(self.input_resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, length, c = x.shape
        if length != h * w:
            raise ModelInputError(f"Swin block built for a {h}x{w} token grid got {length} tokens")
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        s, ws = self.shift_size, self.window_size
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.view(-1, ws, ws, c), ws, h, w)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
            f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}"
        )


class PatchMerging(nn.Module):
    """2×2 neighbourhood concat (order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]) -> LN(4C) -> Linear 4C->2C."""

    def __init__(self, input_resolution: tuple[int, int], dim: int):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def _pixel_shuffle_tokens(x: torch.Tensor, h: int, w: int, scale: int) -> torch.Tensor:
    """(B, H*W, s*s*C) tokens -> (B, sH*sW, C): :func:`pixel_shuffle_nhwc` on the token grid."""
    b, _, channels = x.shape
    return pixel_shuffle_nhwc(x.view(b, h, w, channels), scale).reshape(b, -1, channels // (scale * scale))


class PatchExpand(nn.Module):
    """Linear C->2C (no bias) -> 2×2 rearrange -> LN(C/2): (H, W, C) -> (2H, 2W, C/2)."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, dim_scale: int = 2):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.dim = dim
        self.expand = nn.Linear(dim, 2 * dim, bias=False) if dim_scale == 2 else nn.Identity()
        self.norm = nn.LayerNorm(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        return self.norm(_pixel_shuffle_tokens(self.expand(x), h, w, 2))


class FinalPatchExpandX4(nn.Module):
    """Linear C->s²C (no bias) -> s×s rearrange -> LN(C); the official ``FinalPatchExpand_X4`` with s = 4."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, dim_scale: int = 4):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.dim = dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim_scale * dim, bias=False)
        self.output_dim = dim
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        return self.norm(_pixel_shuffle_tokens(self.expand(x), h, w, self.dim_scale))


class BasicLayer(nn.Module):
    """Encoder stage: ``depth`` blocks alternating shift 0 / window//2, then optional PatchMerging (``downsample``)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] | float = 0.0,
        downsample: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                self.input_resolution,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=rates[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(self.input_resolution, dim) if downsample else None

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, x, self.use_checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


class BasicLayerUp(BasicLayer):
    """Decoder stage (official ``BasicLayer_up``): blocks, then optional PatchExpand (``upsample``)."""

    def __init__(self, *args: Any, upsample: bool = False, **kwargs: Any):
        super().__init__(*args, downsample=False, **kwargs)
        del self.downsample  # the official BasicLayer_up has no ``downsample`` attribute
        self.upsample = PatchExpand(self.input_resolution, self.dim, dim_scale=2) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run_blocks(x)
        return self.upsample(x) if self.upsample is not None else x


class PatchEmbed(nn.Module):
    """Non-overlapping patch×patch conv (``proj``) + LayerNorm (``norm``) -> (B, H/p * W/p, C)."""

    def __init__(
        self, img_size: tuple[int, int], patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True
    ):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.patches_resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


# --------------------------------------------------------------------------------------------
# Geometry checks.
# --------------------------------------------------------------------------------------------


def stage_geometry(
    img_size: int | Sequence[int], patch_size: int = 4, window_size: int = 7, num_layers: int = 4
) -> list[dict[str, Any]]:
    """Per stage: token grid, effective window and shift; :class:`ModelInputError` when the windows cannot tile it.

    Rule: H and W must be divisible by ``patch_size * 2**(num_layers-1)`` (each stage grid a whole
    number, every merged grid even) and every stage grid must be divisible by the window size; as
    in the official code, a grid whose smaller side is at most the window gets one window of that
    side (no shift), and the grid must then be divisible by it. With patch 4, window 7 and four
    stages this means H/4, H/8, H/16 and H/32 all multiples of 7: H and W multiples of 224.
    """
    h, w = to_2tuple(img_size, "img_size")
    rule = (
        f"every stage's token grid (H/{patch_size}, H/{patch_size * 2}, ..., H/{patch_size * 2 ** (num_layers - 1)}, "
        f"same for W) must be a whole number divisible by window_size={window_size}"
    )
    if window_size == 7 and patch_size == 4 and num_layers == 4:
        rule += " (i.e. H and W multiples of 224, e.g. 224 or 448)"
    if h <= 0 or w <= 0 or h % (patch_size * 2 ** (num_layers - 1)) or w % (patch_size * 2 ** (num_layers - 1)):
        raise ModelInputError(f"Swin-UNet cannot be built for img_size {h}x{w}: {rule}")
    stages = []
    for i in range(num_layers):
        res = (h // (patch_size * 2**i), w // (patch_size * 2**i))
        win, shift = window_size, window_size // 2
        if min(res) <= window_size:
            win, shift = min(res), 0
        if res[0] % win or res[1] % win:
            raise ModelInputError(
                f"Swin-UNet cannot be built for img_size {h}x{w}: stage {i} has a {res[0]}x{res[1]} token grid, "
                f"which {win}x{win} windows cannot tile; {rule}"
            )
        stages.append({"resolution": res, "window": win, "shift": shift})
    return stages


# --------------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------------


class SwinTransformerSys(nn.Module):
    """The official ``SwinTransformerSys`` (encoder, bottleneck, mirrored decoder, ×4 expand, 1×1 conv).

    Defaults are the published lite configuration (``swin_tiny_patch4_window7_224_lite.yaml``),
    not the official class defaults (which use drop path 0.1). Returns (B, num_classes, H, W) logits.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 9,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty and of equal length")
        n = len(depths)
        for i in range(n):
            if (embed_dim * 2**i) % num_heads[i]:
                raise ValueError(f"stage {i}: width {embed_dim * 2 ** i} is not divisible by num_heads {num_heads[i]}")
        self.img_size = to_2tuple(img_size, "img_size")
        self.geometry = stage_geometry(self.img_size, patch_size, window_size, n)
        self.num_classes = num_classes
        self.num_layers = n
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.num_features = int(embed_dim * 2 ** (n - 1))
        self.num_features_up = int(embed_dim * 2)
        self.mlp_ratio = mlp_ratio
        self.final_upsample = "expand_first"

        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim, patch_norm)
        self.patches_resolution = self.patch_embed.patches_resolution
        ph, pw = self.patches_resolution
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [float(r) for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]

        def rates(stage: int) -> list[float]:
            return dpr[sum(depths[:stage]) : sum(depths[: stage + 1])]

        def resolution(stage: int) -> tuple[int, int]:
            return (ph // 2**stage, pw // 2**stage)

        common = dict(window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                      drop=drop_rate, attn_drop=attn_drop_rate, use_checkpoint=use_checkpoint)
        self.layers = nn.ModuleList(
            BasicLayer(embed_dim * 2**i, resolution(i), depths[i], num_heads[i], drop_path=rates(i),
                       downsample=i < n - 1, **common)
            for i in range(n)
        )

        # Decoder step j works at the width and grid of encoder stage n-1-j and mirrors its depth,
        # heads and drop-path rates; step 0 is a bare PatchExpand of the bottleneck.
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for j in range(n):
            stage = n - 1 - j
            dim = embed_dim * 2**stage
            self.concat_back_dim.append(nn.Linear(2 * dim, dim) if j > 0 else nn.Identity())
            if j == 0:
                self.layers_up.append(PatchExpand(resolution(stage), dim, dim_scale=2))
            else:
                self.layers_up.append(
                    BasicLayerUp(dim, resolution(stage), depths[stage], num_heads[stage], drop_path=rates(stage),
                                 upsample=j < n - 1, **common)
                )

        self.norm = nn.LayerNorm(self.num_features)
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = FinalPatchExpandX4(self.patches_resolution, embed_dim, dim_scale=patch_size)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)

        self.apply(self._init_weights)

    # The official _init_weights: Linear trunc-normal(0.02) / bias 0, LayerNorm 1 / 0.
    _init_weights = staticmethod(init_trunc_normal_)

    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ModelInputError(f"Swin-UNet expects a 4-D (batch, channels, height, width) tensor, got {shape}")
        h, w = x.shape[-2:]
        if (h, w) != self.img_size:
            raise ModelInputError(
                f"Swin-UNet was built for {self.img_size[0]}x{self.img_size[1]} inputs and got {h}x{w}: its window masks, "
                f"token grids and final expansion are fixed at construction. Resize the input, or build the model with "
                f"img_size=({h}, {w}) if that size fits the windows (every stage's token grid divisible by the "
                f"window size; with patch 4 and window 7, multiples of 224)"
            )
        if x.shape[1] != self.patch_embed.in_chans:
            raise ModelInputError(f"Swin-UNet was built for {self.patch_embed.in_chans} input channels, got {x.shape[1]}")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        skips = []
        for layer in self.layers:
            skips.append(x)  # the skip of stage i is its input
            x = layer(x)
        return self.norm(x), skips

    def forward_up_features(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for j, layer_up in enumerate(self.layers_up):
            if j > 0:
                x = self.concat_back_dim[j](torch.cat([x, skips[self.num_layers - 1 - j]], dim=-1))
            x = layer_up(x)
        return self.norm_up(x)

    def up_x4(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h, w = self.img_size
        x = self.up(x).view(b, h, w, -1).permute(0, 3, 1, 2)
        return self.output(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x, skips = self.forward_features(x)
        return self.up_x4(self.forward_up_features(x, skips))


class SwinUnet(nn.Module):
    """The official wrapper (``networks/vision_transformer.py``): holds ``swin_unet``; a 1-channel input is repeated to 3.

    ``forward`` returns (B, num_classes, H, W) logits.
    """

    def __init__(self, num_classes: int = 9, in_chans: int = 3, img_size: int | Sequence[int] = 224, **kwargs: Any):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.swin_unet = SwinTransformerSys(img_size=img_size, in_chans=in_chans, num_classes=num_classes, **kwargs)

    @property
    def img_size(self) -> tuple[int, int]:
        return self.swin_unet.img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swin_unet(check_image_channels(x, self.in_chans, "Swin-UNet"))

    def load_from(self, path: str | PathLike[str] | Mapping[str, Any], map_location: Any = "cpu") -> "SwinPretrainedReport":
        """Initialise from Swin-T ImageNet weights (or a Swin-UNet checkpoint); see :func:`load_swin_pretrained`."""
        return load_swin_pretrained(self, path, map_location=map_location)


# --------------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------------


@dataclass
class SwinPretrainedReport:
    """What :func:`load_swin_pretrained` did. Key names are ``SwinTransformerSys`` names (no ``swin_unet.``).

    ``mode`` is ``"swin-imagenet"`` (the checkpoint had ``"model"``) or ``"swin-unet"`` (it did not:
    the official code then treats it as a Swin-UNet checkpoint). ``candidates`` counts the entries
    after the official expansion (ImageNet: checkpoint + one ``layers_up`` copy per ``layers.`` key).
    ``skipped`` maps a candidate name to why it was not loaded; ``shape_mismatches`` are also
    listed there. ``not_loaded`` are model entries left at their initial values.
    """

    source: str
    mode: str
    checkpoint_keys: int
    model_keys: int
    candidates: int = 0
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    shape_mismatches: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)

    @property
    def encoder_loaded(self) -> list[str]:
        return [k for k in self.loaded if not k.startswith("layers_up.")]

    @property
    def decoder_loaded(self) -> list[str]:
        return [k for k in self.loaded if k.startswith("layers_up.")]

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for why in self.skipped.values():
            reasons[why] = reasons.get(why, 0) + 1
        lines = [
            f"Swin-UNet init from {self.source} ({self.mode}): checkpoint {self.checkpoint_keys} entries, "
            f"{self.candidates} candidates, model {self.model_keys} entries",
            f"  loaded {len(self.loaded)} (encoder {len(self.encoder_loaded)}, decoder {len(self.decoder_loaded)}); "
            f"left at init {len(self.not_loaded)}",
        ]
        lines += [f"  skipped {count}: {why}" for why, count in sorted(reasons.items())]
        if self.shape_mismatches:
            lines.append(f"  shape mismatches: {self.shape_mismatches}")
        return "\n".join(lines)

    __str__ = summary  # what the engine's log line shows


_STAGE_KEY = re.compile(r"^layers\.(\d+)\.")


def load_swin_pretrained(
    model: nn.Module,
    path: str | PathLike[str] | Mapping[str, Any],
    map_location: Any = "cpu",
) -> SwinPretrainedReport:
    """Initialise Swin-UNet the way the official ``SwinUnet.load_from`` does; returns a report.

    Official: ``networks/vision_transformer.py`` ``SwinUnet.load_from`` (at ``0644419``), with
    Microsoft's ImageNet-1k ``swin_tiny_patch4_window7_224.pth`` as ``PRETRAIN_CKPT``.

    ``path``: a checkpoint file, read with ``torch.load(..., weights_only=True)`` (a file that needs
    full unpickling raises :class:`CheckpointFormatError` naming it; there is no unsafe retry), or an
    already loaded dict. ``model``: a :class:`SwinUnet` or its ``.swin_unet``.

    * Checkpoint with ``"model"`` (Microsoft / timm-0.4 Swin-T ImageNet names, e.g.
      ``swin_tiny_patch4_window7_224.pth``): every entry, plus for each ``layers.i.<rest>`` a copy
      named ``layers_up.(n-1-i).<rest>`` (n = 4: encoder stage i -> decoder stage 3-i). Candidates
      the model has with the same shape are loaded (``strict=False``); shape mismatches are
      dropped; names the model lacks are ignored. For the lite model and Swin-T this loads 217 of
      238 entries: all encoder entries and all decoder blocks (``layers_up.1`` <- stage-2 blocks
      0-1, ``layers_up.2`` <- stage 1, ``layers_up.3`` <- stage 0). Ignored: ``head.*``, Swin-T stage-2
      blocks 2-5 and their copies, ``layers_up.0.blocks.*``, ``layers_up.{1,2,3}.downsample.*``.
      Left at init: ``concat_back_dim.*``, every PatchExpand, ``up.*``, ``norm_up``, ``output``.
    * Checkpoint without ``"model"``: the official code treats it as a Swin-UNet checkpoint saved by
      its trainer under DataParallel and slices off 17 characters (``module.swin_unet.``), deletes
      every key containing ``output`` (so the class count may differ) and loads with
      ``strict=False``. Here the ``module.`` and ``swin_unet.`` prefixes are removed by name
      (a checkpoint saved without DataParallel has only ``swin_unet.``, which the official slice
      mangles so that nothing loads), ``output`` keys are dropped likewise, and shape mismatches
      are skipped and reported instead of failing.
    """
    net = inner_module(model, "swin_unet", SwinTransformerSys, "SwinUnet")
    obj = read_checkpoint(path, map_location)  # a mapping is returned as it is
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"checkpoint {describe(path)} holds a {type(obj).__name__}, not a dict")
    own = net.state_dict()

    if "model" in obj:
        state = obj["model"]
        if not is_state_dict(state):
            raise CheckpointFormatError(f"checkpoint {describe(path)}: 'model' is not a state dict (name -> tensor)")
        report = SwinPretrainedReport(describe(path), "swin-imagenet", len(state), len(own))
        candidates: dict[str, torch.Tensor] = dict(state)
        for key, value in state.items():
            match = _STAGE_KEY.match(key)
            if match is not None and int(match.group(1)) < net.num_layers:
                mirrored = f"layers_up.{net.num_layers - 1 - int(match.group(1))}." + key[match.end():]
                candidates[mirrored] = value
    else:
        if not is_state_dict(obj):
            raise CheckpointFormatError(
                f"checkpoint {describe(path)} has no 'model' entry and is not a bare state dict (name -> tensor); "
                f"found keys {list(obj)[:10]}"
            )
        report = SwinPretrainedReport(describe(path), "swin-unet", len(obj), len(own))
        candidates = {}
        for key, value in obj.items():
            name = key.removeprefix("module.").removeprefix("swin_unet.")
            if "output" in name:
                report.skipped[name] = "deleted: name contains 'output' (as the official code does)"
                continue
            candidates[name] = value

    report.candidates = len(candidates) + len(report.skipped)
    selected: dict[str, torch.Tensor] = {}
    for key, value in candidates.items():
        if key not in own:
            report.skipped[key] = "not in model"
            continue
        mismatch = shape_mismatch(key, value, own[key])
        if mismatch is not None:
            report.skipped[key] = "shape mismatch"
            report.shape_mismatches.append(mismatch)
            continue
        selected[key] = value
        report.loaded.append(key)
    net.load_state_dict(selected, strict=False)
    report.not_loaded = [k for k in own if k not in selected]
    log.info("%s", report.summary())
    return report


def load_swin_unet_checkpoint(
    model: nn.Module,
    path: str | PathLike[str] | Mapping[str, Any],
    map_location: Any = "cpu",
    strict: bool = True,
):
    """Load a trained Swin-UNet state dict (official trainer format) with ``weights_only=True``.

    Accepts a bare state dict (what the official trainer saves) or one under ``model`` /
    ``state_dict``; a DataParallel ``module.`` prefix is removed. ``model`` is a :class:`SwinUnet`
    (keys ``swin_unet.*``) or its ``.swin_unet`` (the prefix is then removed too). Returns
    ``load_state_dict``'s result.
    """
    state = state_dict_in(read_checkpoint(path, map_location), path, ("model", "state_dict"))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if isinstance(model, SwinTransformerSys):
        state = {k.removeprefix("swin_unet."): v for k, v in state.items()}
    return model.load_state_dict(state, strict=strict)


# --------------------------------------------------------------------------------------------
# Registration: the recipe of train.py / trainer.py / train.sh at 0644419; the published Synapse
# row of the paper's Table 1 (arXiv 2105.05537), which VM-UNet's Table II reuses.
# --------------------------------------------------------------------------------------------

_PUBLISHED = (
    PublishedResult(
        dataset="synapse",
        # DSC in %, HD95 in voxels (TransUNet's metric code, which Swin-UNet's test.py reuses);
        # per-organ DSC in the paper's column order.
        metrics={
            "dsc": 79.13,
            "hd95": 21.55,
            "dsc_aorta": 85.47,
            "dsc_gallbladder": 66.53,
            "dsc_kidney_l": 83.28,
            "dsc_kidney_r": 79.61,
            "dsc_liver": 94.29,
            "dsc_pancreas": 56.58,
            "dsc_spleen": 90.66,
            "dsc_stomach": 76.60,
        },
        source="Swin-UNet T.1 (transcribed; some copies 79.12)",
    ),
)

_RECIPE: dict[str, Any] = {
    "source": "HuCaoFighting/Swin-Unet @ 0644419: train.py, trainer.py, train.sh, "
    "configs/swin_tiny_patch4_window7_224_lite.yaml",
    "dataset": "synapse",
    "num_classes": 9,
    "input_size": (224, 224),
    "optimizer": {
        "name": "SGD",
        "lr": 0.05,  # README / train.sh; the argparse default is 0.01
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "lr_batch_scaling": "lr *= batch/24 when batch != 24 and batch % 6 == 0",
    },
    "scheduler": {"name": "poly", "power": 0.9, "step": "iteration", "max_iterations": "epochs * len(train_loader)"},
    "epochs": 150,
    "batch_size": 24,
    "loss": {"ce_weight": 0.4, "dice_weight": 0.6, "dice": "TransUNet DiceLoss on softmax, all 9 classes incl. background"},
    "augmentation": "TransUNet RandomGenerator (rot90+flip p 0.5, else rotate [-20, 20) p 0.5; zoom to 224)",
    "seed": 1234,
    "deterministic": True,
    "drop_path_rate": 0.2,
    "pretrained": "Swin-T ImageNet-1k swin_tiny_patch4_window7_224.pth, encoder and mirrored decoder (load_swin_pretrained)",
    "selection": "last epoch (epoch_149.pth); no validation split",
}


@register_model(
    "swin-unet",
    family="swin-unet",
    paper=PAPER,
    input_size=(224, 224),
    description="Swin-UNet, published lite configuration: depths [2,2,2,2] (decoder mirrored), embed 96, heads "
    "[3,6,12,24], window 7, patch 4, drop path 0.2; 27,168,900 parameters with 9 classes; 224x224 "
    "(other multiples of 224 via img_size); returns logits",
    published=_PUBLISHED,
    recipe=_RECIPE,
    load_pretrained=load_swin_pretrained,  # model.pretrained: Swin-T ImageNet weights or a Swin-UNet checkpoint
)
def swin_unet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> SwinUnet:
    """Build Swin-UNet in the published lite configuration; ``overrides`` go to :class:`SwinTransformerSys`."""
    return SwinUnet(num_classes=num_classes, in_chans=in_chans, **overrides)
