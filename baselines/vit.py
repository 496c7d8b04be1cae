"""DeiT / ViT encoder blocks with timm's (and facebookresearch/deit's) parameter names.

Module and parameter names follow the DeiT ImageNet checkpoints (``ckpt["model"]``):
``cls_token``, ``pos_embed``, ``patch_embed.proj.{weight,bias}``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}`` and ``norm.*``
(the ImageNet ``head.*`` is not built here). Written without timm.

:class:`DeiTEncoder` is the transformer branch TransFuse builds (its ``lib/DeiT.py``):

* the forward does **not** prepend the cls token: patch tokens + position embedding -> blocks ->
  final LayerNorm, returning all ``(B, N, C)`` patch tokens;
* ``cls_token`` is still a parameter (loaded from ImageNet weights, never used), so checkpoints
  keep the key;
* ``pos_embed`` has one entry per patch of the model's token grid and no cls entry:
  ``(1, grid_h * grid_w, C)``. The reference builds it by slicing the cls entry off a 14x14
  (224-pixel) embedding and resizing it bilinearly (``align_corners=True``) to the grid
  (:func:`resize_pos_embed`); the TransFuse loader does that to the ImageNet embedding. Without
  pretrained weights the reference embedding is all zeros (``pos_embed_init="zeros"``, which
  TransFuse-S uses); the default here is timm's truncated normal, resized the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmbench.errors import ModelInputError
from vmbench.models.layers import DropPath, Mlp, init_trunc_normal_, to_2tuple, trunc_normal_

__all__ = [
    "Attention",
    "Block",
    "DeiTEncoder",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "deit_small_encoder",
    "resize_pos_embed",
]


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v stacked in that order)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )  # softmax(q k^T * scale) v
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution, flattened to (B, N, C) tokens in row-major order."""

    def __init__(self, img_size: int | Sequence[int], patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384):
        super().__init__()
        self.img_size = to_2tuple(img_size, "img_size")
        self.patch_size = to_2tuple(patch_size, "patch_size")
        h, w = self.img_size
        ph, pw = self.patch_size
        if h % ph or w % pw or h <= 0 or w <= 0:
            raise ModelInputError(f"image size {h}x{w} is not a positive multiple of the patch size {ph}x{pw}")
        self.grid_size = (h // ph, w // pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def resize_pos_embed(
    pos_embed: torch.Tensor,
    src_grid: Sequence[int],
    dst_grid: Sequence[int],
    num_prefix_tokens: int = 0,
    keep_prefix: bool = False,
) -> torch.Tensor:
    """Resize a (1, prefix + Hs*Ws, C) position embedding to (1, [prefix +] Hd*Wd, C).

    The first ``num_prefix_tokens`` entries (the cls entry of a DeiT checkpoint) are dropped, or
    kept in front when ``keep_prefix``; the patch entries are laid out as an Hs x Ws grid and
    resized with bilinear interpolation, ``align_corners=True``, as TransFuse does.
    """
    hs, ws = to_2tuple(src_grid, "src_grid")
    hd, wd = to_2tuple(dst_grid, "dst_grid")
    if pos_embed.dim() != 3 or pos_embed.shape[1] != num_prefix_tokens + hs * ws:
        raise ValueError(
            f"position embedding of shape {tuple(pos_embed.shape)} does not hold {num_prefix_tokens} prefix "
            f"token(s) + a {hs}x{ws} grid"
        )
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if (hs, ws) != (hd, wd):
        c = grid.shape[-1]
        grid = grid.transpose(1, 2).reshape(grid.shape[0], c, hs, ws)
        grid = F.interpolate(grid.float(), size=(hd, wd), mode="bilinear", align_corners=True).to(pos_embed.dtype)
        grid = grid.flatten(2).transpose(1, 2)
    return torch.cat([prefix, grid], dim=1) if keep_prefix else grid.contiguous()


class DeiTEncoder(nn.Module):
    """DeiT trunk as TransFuse uses it: patch tokens only, no cls token in the sequence, no head.

    Output: ``(B, grid_h * grid_w, embed_dim)`` after the final LayerNorm. The input must have
    exactly ``img_size`` (the position embedding is built for that token grid).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        init_grid: Sequence[int] = (14, 14),
        pos_embed_init: str = "trunc_normal",
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i], norm_eps)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        if pos_embed_init not in ("trunc_normal", "zeros"):
            raise ValueError(f"pos_embed_init must be 'trunc_normal' or 'zeros', got {pos_embed_init!r}")
        self._init_weights(to_2tuple(init_grid, "init_grid"), pos_embed_init)

    @torch.no_grad()
    def _init_weights(self, init_grid: tuple[int, int], pos_embed_init: str) -> None:
        # timm ViT init: truncated normal (std .02) for Linear weights and the two embeddings,
        # zero biases, LayerNorm 1/0; the patch projection keeps PyTorch's conv default. Modules
        # in registration order (as timm's loop), which fixes the random stream of a seeded build.
        for m in self.modules():
            init_trunc_normal_(m)
        trunc_normal_(self.cls_token, std=0.02)
        if pos_embed_init == "zeros":
            # TransFuse's DeiT subclass replaces the initialised embedding by a zero one before
            # (optionally) loading ImageNet weights, so without them it stays zero.
            self.pos_embed.zero_()
            return
        # timm: a (1, 1 + 14*14, C) embedding is drawn; as TransFuse does, its cls entry is
        # dropped and the grid resized to this model's token grid.
        full = trunc_normal_(torch.empty(1, 1 + init_grid[0] * init_grid[1], self.embed_dim), std=0.02)
        self.pos_embed.copy_(resize_pos_embed(full, init_grid, self.grid_size, num_prefix_tokens=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def deit_small_encoder(img_size: int | Sequence[int] = (192, 256), depth: int = 8, **kwargs) -> DeiTEncoder:
    """DeiT-S geometry (patch 16, width 384, 6 heads, MLP 4x, qkv bias, LN eps 1e-6); depth 8 as in TransFuse-S."""
    cfg = dict(patch_size=16, embed_dim=384, num_heads=6, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6)
    cfg.update(kwargs)
    return DeiTEncoder(img_size=img_size, depth=depth, **cfg)
