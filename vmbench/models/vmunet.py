"""VM-UNet (Ruan & Xiang, arXiv 2402.02491) as the official code builds it.

The module tree, parameter names, shapes, initialisation and forward mirror the official
``models/vmunet/{vmunet,vmamba}.py`` of ``JCruan519/VM-UNet`` at ``43c495b`` (model code
unchanged since ``032efd7``; ``vmamba.py`` is VMamba v0's ``SS2D`` from ``MzeroMiko/VMamba`` at
``0ec6c27``, ``classification/models/vmamba/vmamba.py``, plus VM-UNet's decoder), so official
VM-UNet checkpoints load with ``strict=True`` and VMamba-S v0 ImageNet weights load through
:func:`load_pretrained_vmamba` exactly as the official ``load_from`` maps them. File and line
references below (``vmamba.py:250``) are to that commit. Paper: Ruan & Xiang, arXiv 2402.02491.

Differences from the official code, all deliberate:

* :class:`VMUNet` returns logits for every ``num_classes`` (the official wrapper applies a
  sigmoid when ``num_classes == 1``).
* Input checks: sides not divisible by 32, a wrong channel count or a non-4D tensor raise
  :class:`vmbench.errors.ModelInputError` (a ``ValueError``) instead of being cropped
  (``PatchMerging2D``) or failing deep inside.
* Constructor defaults are the paper configuration (``configs/config_setting.py:12-20``,
  ``configs/config_setting_synapse.py:14-22``), not the official class defaults.
* ``expand``, ``dt_rank`` and ``d_conv`` reach every block (the official ``VSSLayer`` drops them,
  so there they are fixed at 2 / "auto" / 3, which are also our defaults).
* The selective scan comes from :func:`vmbench.ops.selective_scan` instead of a silently-failing
  ``mamba_ssm`` import. Its automatic order is cuda -> triton -> torch: on CUDA inputs mamba-ssm's
  compiled kernel when ``selective_scan_cuda`` imports, else vmbench's Triton kernels when triton
  imports, else (and always on CPU) vmbench's PyTorch scan. ``VMBENCH_SCAN_BACKEND`` picks one
  explicitly; the choice is logged, and a requested backend that cannot run is an error.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vmbench.checkpoints import CheckpointFormatError, describe, read_checkpoint
from vmbench.errors import ModelInputError
from vmbench.models.layers import DropPath, check_image_channels, init_trunc_normal_, pixel_shuffle_nhwc, run_blocks
from vmbench.models.loading import inner_module, shape_mismatch, state_dict_in
from vmbench.models.mamba import check_ablation, ssm_skip
from vmbench.ops import selective_scan
from vmbench.ablation import NO_MAMBA, NO_SSM
from vmbench.registry import PublishedResult, register_model

__all__ = [
    "CheckpointFormatError",
    "Final_PatchExpand2D",
    "PatchEmbed2D",
    "PatchExpand2D",
    "PatchMerging2D",
    "PretrainedLoadReport",
    "SS2D",
    "VMUNet",
    "VSSBlock",
    "VSSLayer",
    "VSSLayer_up",
    "VSSM",
    "load_pretrained_vmamba",
    "load_vmunet_checkpoint",
    "vmunet",
]

log = logging.getLogger("vmbench.models")

PAPER = "VM-UNet: Vision Mamba UNet for Medical Image Segmentation (Ruan & Xiang, arXiv 2402.02491)"

# Paper configuration (configs/config_setting.py:12-20, config_setting_synapse.py:14-22), not the
# class defaults of VMUNet.__init__ (depths [2,2,9,2] / [2,9,2,2], a 44.27 M network).
PAPER_DEPTHS = (2, 2, 2, 2)
PAPER_DEPTHS_DECODER = (2, 2, 2, 1)
PAPER_DIMS = (96, 192, 384, 768)


# --------------------------------------------------------------------------------------------
# Small modules (vmamba.py:146-248). All tensors are channels-last (B, H, W, C) between modules.
# --------------------------------------------------------------------------------------------


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch embedding: Conv2d(k = s = patch_size) -> NHWC -> optional norm.

    Keys ``proj.{weight,bias}``, ``norm.{weight,bias}``. The conv keeps PyTorch's default init
    (the official ``_init_weights`` never touches Conv2d).
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm_layer: Callable[..., nn.Module] | None = None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class PatchMerging2D(nn.Module):
    """2x downsampling: gather each 2x2 neighbourhood on channels -> LayerNorm(4C) -> Linear(4C, 2C).

    The sub-grid order is Swin's, ``x[0::2, 0::2]``, ``x[1::2, 0::2]``, ``x[0::2, 1::2]``,
    ``x[1::2, 1::2]`` (first index = rows). It fixes which input rows of ``reduction.weight`` see
    which pixel, so it must not change or pretrained weights silently mean something else.
    Odd sizes are rejected upstream by the input check instead of being cropped.
    """

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        if height % 2 or width % 2:
            raise ModelInputError(f"PatchMerging2D needs an even token grid, got {height}x{width}")
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """2x upsampling: Linear(2*dim, 4*dim) -> pixel shuffle -> LayerNorm(dim).

    ``dim`` is the OUTPUT width (the official class doubles it internally: it takes 2*dim
    channels). The Linear output is split as ``(p1 p2 c)`` with p1 (row offset) slowest; this
    order is part of the checkpoint format.
    """

    def __init__(self, dim: int, dim_scale: int = 2, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim * 2  # input width, as in the official code
        self.dim_scale = dim_scale
        self.expand = nn.Linear(self.dim, dim_scale * self.dim, bias=False)
        self.norm = norm_layer(self.dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_nhwc(self.expand(x), self.dim_scale))


class Final_PatchExpand2D(nn.Module):  # noqa: N801 - the official class name
    """Final 4x upsampling: Linear(dim, 4*dim) -> 4x4 pixel shuffle -> LayerNorm(dim / 4).

    With dim = 96 this gives 24 channels at full resolution (keys ``final_up.expand.weight``
    (384, 96), ``final_up.norm.*`` (24)); same ``(p1 p2 c)`` channel order as PatchExpand2D.
    """

    def __init__(self, dim: int, dim_scale: int = 4, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim, bias=False)
        self.norm = norm_layer(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_nhwc(self.expand(x), self.dim_scale))


# --------------------------------------------------------------------------------------------
# SS2D (vmamba.py:250-473): the 2-D selective-scan mixer of VMamba v0.
# --------------------------------------------------------------------------------------------


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, L): row-major, column-major, and both reversed.

    Only the column-major flatten and the two flips copy; ``stack`` then writes the result
    once, directly in the (B, K, D, L) layout the scan wants as (B, K*D, L).
    """
    row = x.flatten(2)  # l = h*W + w (a view of the contiguous conv output)
    col = x.transpose(2, 3).flatten(2)  # l = w*H + h
    return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, D, L) -> (B, H, W, D): undo each direction's token order and sum (unweighted).

    The two column-major outputs are summed first and transposed back once, as a strided view
    inside the final addition, instead of copying each one back to row-major.
    """
    batch, _, dim, _ = ys.shape
    row = ys[:, 0] + ys[:, 2].flip(-1)
    col = ys[:, 1] + ys[:, 3].flip(-1)
    y = row.view(batch, dim, height, width) + col.view(batch, dim, width, height).transpose(2, 3)
    return y.permute(0, 2, 3, 1)


class SS2D(nn.Module):
    """2-D selective scan (VMamba v0 ``SS2D``, ``forward_corev0``), the token mixer of a VSS block.

    ``in_proj`` (C -> 2D, x = first half, z = second half) -> depthwise 3x3 conv + SiLU on x ->
    four-direction cross-scan -> per-direction projections to (dt, B, C) -> one grouped selective
    scan over K*D channels (group k = direction k) -> cross-merge (sum) -> LayerNorm ->
    gate with SiLU(z) -> ``out_proj`` (2D -> C). D = d_inner = expand*C, R = dt_rank.

    Raw parameters (all k-major: row k*D + d belongs to direction k, channel d):
    ``x_proj_weight`` (4, R+2N, D), ``dt_projs_weight`` (4, D, R), ``dt_projs_bias`` (4, D),
    ``A_logs`` (4D, N), ``Ds`` (4D). The dt bias is applied inside the scan (``delta_bias``).

    ``ablation`` (ablation twins, set by :func:`vmbench.ablation.ablate`): ``no-ssm`` replaces the
    scan by its skip path ``Ds * u`` per direction (the recurrence, with ``x_proj_weight``,
    ``dt_projs_*`` and ``A_logs``, is gone; in_proj, the conv, the cross-merge, out_norm, the SiLU(z)
    gate and out_proj remain); ``no-mamba`` makes the whole mixer the identity.
    """

    K = 4  # scan directions
    ABLATIONS = (NO_SSM, NO_MAMBA)  # the parts vmbench.ablation.ablate may remove

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        dropout: float = 0.0,
        conv_bias: bool = True,
        bias: bool = False,
        ablation: str | None = None,
    ):
        super().__init__()
        self.ablation = check_ablation(self, ablation)
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        d_inner, rank, k = self.d_inner, self.dt_rank, self.K

        # Construction order follows the official __init__ so that a seeded build draws the
        # random numbers in the same order (it only matters for bit-exact reproduction).
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        self.act = nn.SiLU()

        # Four Linear(D, R+2N) built with PyTorch's default init, U(+-1/sqrt(D)), then stacked:
        # the official code deletes the modules, so VSSM._init_weights never re-initialises them.
        x_proj = [nn.Linear(d_inner, rank + 2 * d_state, bias=False).weight.detach() for _ in range(k)]
        self.x_proj_weight = nn.Parameter(torch.stack(x_proj, dim=0))

        dt_projs = [
            self._dt_projection(rank, d_inner, dt_scale, dt_init, dt_min, dt_max, dt_init_floor) for _ in range(k)
        ]
        self.dt_projs_weight = nn.Parameter(torch.stack([w for w, _ in dt_projs], dim=0))
        self.dt_projs_bias = nn.Parameter(torch.stack([b for _, b in dt_projs], dim=0))

        # S4D-real: A = -(1..N) for every channel and direction, stored as log; D skip = 1.
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(a_log)
        self.A_logs._no_weight_decay = True  # kept for parity; the VM-UNet optimizer ignores it
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.Ds._no_weight_decay = True

        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()

    @staticmethod
    def _dt_projection(
        dt_rank: int,
        d_inner: int,
        dt_scale: float,
        dt_init: str,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (D, R) and bias (D) of one direction's dt projection (Mamba's dt init).

        The bias is softplus^-1 of dt ~ logU[dt_min, dt_max] (floored), so the initial step sizes
        softplus(bias) lie in [dt_min, dt_max]. A real nn.Linear is built first only so that the
        random-number stream advances as in the official code.
        """
        proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(proj.weight, std)
            elif dt_init == "random":
                nn.init.uniform_(proj.weight, -std, std)
            else:
                raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
            log_dt = torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp(min=dt_init_floor)
            inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        return proj.weight.detach(), inv_softplus_dt

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) after conv+SiLU -> merged scan output (B, H, W, D) in fp32 (fp64 for fp64)."""
        batch, d_inner, height, width = x.shape
        length = height * width
        k, n, rank = self.K, self.d_state, self.dt_rank

        xs = cross_scan(x)  # (B, K, D, L)
        cdt = torch.float64 if xs.dtype == torch.float64 else torch.float32
        if self.ablation == NO_SSM:
            ys = ssm_skip(xs.reshape(batch, k * d_inner, length).to(cdt), self.Ds)
            return cross_merge(ys.view(batch, k, d_inner, length), height, width)
        # Per-direction projections as broadcast matmuls: (K, c, D) @ (B, K, D, L) -> (B, K, c, L).
        x_dbl = torch.matmul(self.x_proj_weight, xs)
        dts, bs, cs = torch.split(x_dbl, [rank, n, n], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (K, D, R) @ (B, K, R, L) -> (B, K, D, L)

        # The official code runs the scan in fp32 whatever the input dtype; fp64 stays fp64 so the
        # float64 oracle tests exercise the real module (cdt above).
        ys = selective_scan(
            xs.reshape(batch, k * d_inner, length).to(cdt),
            dts.reshape(batch, k * d_inner, length).to(cdt),
            -torch.exp(self.A_logs.to(cdt)),
            bs.to(cdt),  # (B, K, N, L): group k = direction k
            cs.to(cdt),
            self.Ds.to(cdt),
            z=None,
            delta_bias=self.dt_projs_bias.reshape(-1).to(cdt),
            delta_softplus=True,
            return_last_state=False,
        ).view(batch, k, d_inner, length)
        return cross_merge(ys, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ablation == NO_MAMBA:
            return x
        x, z = self.in_proj(x).chunk(2, dim=-1)  # x = first half, z = second half (checkpoint format)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.out_norm(self.forward_core(x))
        y = y * F.silu(z)
        return self.dropout(self.out_proj(y))

    def silenced_parameters(self) -> list[nn.Parameter]:
        """The parameters that no longer act under ``self.ablation`` (they stay in the state dict)."""
        if self.ablation == NO_MAMBA:
            return list(self.parameters())
        if self.ablation == NO_SSM:  # x_proj_weight only feeds the scan its (dt, B, C)
            return [self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs]
        return []


class VSSBlock(nn.Module):
    """Visual state-space block: ``x + DropPath(SS2D(LayerNorm(x)))``; no MLP (VMamba v0).

    ``norm_layer`` defaults to ``nn.LayerNorm`` (eps 1e-5): the official signature says eps 1e-6
    but VSSM always passes plain ``nn.LayerNorm``, so trained checkpoints use 1e-5.
    """

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_drop_rate: float = 0.0,
        d_state: int = 16,
        **ss2d_kwargs: Any,
    ):
        super().__init__()
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = SS2D(d_model=hidden_dim, d_state=d_state, dropout=attn_drop_rate, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def _per_block(rates: float | Sequence[float], depth: int) -> list[float]:
    if isinstance(rates, (int, float)):
        return [float(rates)] * depth
    rates = [float(r) for r in rates]
    if len(rates) != depth:
        raise ValueError(f"got {len(rates)} drop-path rates for {depth} blocks")
    return rates


def _advance_rng_like_official(blocks: nn.ModuleList) -> None:
    """Draw what the official VSSLayer's no-op re-init of ``out_proj.weight`` draws.

    The official code kaiming-initialises a detached clone (so nothing changes) but consumes
    random numbers; repeating the draw keeps seeded construction in step with it.
    """
    for block in blocks:
        nn.init.kaiming_uniform_(torch.empty_like(block.self_attention.out_proj.weight), a=math.sqrt(5))


class _BlockStack(nn.Module):
    """Shared pieces of the encoder and decoder stage: the block list and its forward."""

    def _make_blocks(
        self,
        dim: int,
        depth: int,
        attn_drop: float,
        drop_path: float | Sequence[float],
        norm_layer: Callable[..., nn.Module],
        d_state: int,
        block_kwargs: dict[str, Any],
    ) -> None:
        self.blocks = nn.ModuleList(
            VSSBlock(
                hidden_dim=dim,
                drop_path=rate,
                norm_layer=norm_layer,
                attn_drop_rate=attn_drop,
                d_state=d_state,
                **block_kwargs,
            )
            for rate in _per_block(drop_path, depth)
        )
        _advance_rng_like_official(self.blocks)

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, x, self.use_checkpoint)


class VSSLayer(_BlockStack):
    """Encoder stage: ``depth`` VSS blocks at width ``dim``, then optional PatchMerging2D.

    Keys ``blocks.{i}.*`` then ``downsample.*`` (stages 0..n-2).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        downsample: Callable[..., nn.Module] | None = None,
        use_checkpoint: bool = False,
        d_state: int = 16,
        **block_kwargs: Any,
    ):
        super().__init__()
        self.dim = dim
        self.use_checkpoint = use_checkpoint
        self._make_blocks(dim, depth, attn_drop, drop_path, norm_layer, d_state, block_kwargs)
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


class VSSLayer_up(_BlockStack):  # noqa: N801 - the official class name
    """Decoder stage: optional PatchExpand2D (2*dim -> dim, 2x upsampling) FIRST, then the blocks.

    The upsample module is registered after the blocks, as in the official code, so the
    ``state_dict`` order is ``blocks.*`` then ``upsample.*``; the forward runs it first.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        upsample: Callable[..., nn.Module] | None = None,
        use_checkpoint: bool = False,
        d_state: int = 16,
        **block_kwargs: Any,
    ):
        super().__init__()
        self.dim = dim
        self.use_checkpoint = use_checkpoint
        self._make_blocks(dim, depth, attn_drop, drop_path, norm_layer, d_state, block_kwargs)
        self.upsample = upsample(dim=dim, norm_layer=norm_layer) if upsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        return self._run_blocks(x)


# --------------------------------------------------------------------------------------------
# The U-shaped network.
# --------------------------------------------------------------------------------------------


def _check_spatial(height: int, width: int, multiple: int, patch_size: int, num_layers: int) -> None:
    bad = []
    for name, side in (("height", height), ("width", width)):
        if side <= 0 or side % multiple:
            lower = side // multiple * multiple
            options = f"{lower} or {lower + multiple}" if lower > 0 else f"{multiple}"
            bad.append(f"{name} {side} is not (nearest working sizes: {options})")
    if bad:
        raise ModelInputError(
            f"VM-UNet needs input height and width divisible by {multiple} (patch size {patch_size} "
            f"x {num_layers - 1} downsamplings of 2); got {height}x{width}: {'; '.join(bad)}. "
            "H != W is fine. Resize or pad the input: it is never cropped silently."
        )


class VSSM(nn.Module):
    """VM-UNet's network: VMamba-v0 encoder, mirrored VSS decoder with additive skips, 4x head.

    Forward (``forward_features``, vmamba.py:722-741): ``patch_embed`` (4x4 conv, LN) ->
    ``layers`` (encoder stages; each stage's INPUT is kept as a skip s_i) -> ``layers_up`` (stage
    0 on the bottleneck; stage i >= 1 adds skip s_{n-i} to its input BEFORE its PatchExpand, i.e.
    at the coarser scale; s0 is never used) -> ``final_up`` (4x pixel shuffle) -> NCHW ->
    ``final_conv`` (1x1) -> logits.

    Defaults are the paper configuration. ``dims_decoder`` must be ``dims`` reversed: the
    additive skips need matching widths. Init (``VSSM._init_weights``, vmamba.py:697): every
    nn.Linear trunc-normal(std 0.02) with zero bias, every LayerNorm (1, 0), convs and SS2D raw
    parameters keep their own init. Stochastic depth (``VSSM.__init__``):
    ``linspace(0, rate, sum(depths))`` over encoder blocks and the same
    over decoder blocks reversed (the first decoder block gets the full rate).
    """

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1,
        depths: Sequence[int] = PAPER_DEPTHS,
        depths_decoder: Sequence[int] = PAPER_DEPTHS_DECODER,
        dims: int | Sequence[int] = PAPER_DIMS,
        dims_decoder: Sequence[int] | None = None,
        d_state: int = 16,
        expand: float = 2,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        depths, depths_decoder = [int(d) for d in depths], [int(d) for d in depths_decoder]
        self.num_layers = len(depths)
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(self.num_layers)]
        dims = [int(d) for d in dims]
        dims_decoder = dims[::-1] if dims_decoder is None else [int(d) for d in dims_decoder]
        self._validate_config(depths, depths_decoder, dims, dims_decoder)
        if dims_decoder[-1] % patch_size:
            raise ValueError(f"the last decoder width {dims_decoder[-1]} must be divisible by patch_size {patch_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.depths, self.depths_decoder = depths, depths_decoder
        self.dims, self.dims_decoder = dims, dims_decoder
        self.embed_dim, self.num_features = dims[0], dims[-1]
        # Tokens are halved num_layers-1 times after the patch embedding: sides must divide by this.
        self.size_multiple = patch_size * 2 ** (self.num_layers - 1)
        block_kwargs = dict(expand=expand, dt_rank=dt_rank, d_conv=d_conv)

        self.patch_embed = PatchEmbed2D(
            patch_size=patch_size, in_chans=in_chans, embed_dim=dims[0], norm_layer=norm_layer if patch_norm else None
        )
        self.pos_drop = nn.Dropout(p=drop_rate)  # no absolute position embedding (ape=False)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        dpr_decoder = torch.linspace(0, drop_path_rate, sum(depths_decoder), device="cpu").tolist()[::-1]

        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            start = sum(depths[:i])
            self.layers.append(
                VSSLayer(
                    dim=dim,
                    depth=depth,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[start : start + depth],
                    norm_layer=norm_layer,
                    downsample=PatchMerging2D if i < self.num_layers - 1 else None,
                    use_checkpoint=use_checkpoint,
                    d_state=d_state,
                    **block_kwargs,
                )
            )

        self.layers_up = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims_decoder, depths_decoder)):
            start = sum(depths_decoder[:i])
            self.layers_up.append(
                VSSLayer_up(
                    dim=dim,
                    depth=depth,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr_decoder[start : start + depth],
                    norm_layer=norm_layer,
                    upsample=PatchExpand2D if i != 0 else None,
                    use_checkpoint=use_checkpoint,
                    d_state=d_state,
                    **block_kwargs,
                )
            )

        self.final_up = Final_PatchExpand2D(dim=dims_decoder[-1], dim_scale=patch_size, norm_layer=norm_layer)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // patch_size, num_classes, kernel_size=1)

        self.apply(self._init_weights)

    @staticmethod
    def _validate_config(depths: list[int], depths_decoder: list[int], dims: list[int], dims_decoder: list[int]) -> None:
        if not (len(depths) == len(depths_decoder) == len(dims) == len(dims_decoder)) or not depths:
            raise ValueError(
                f"depths {depths}, depths_decoder {depths_decoder}, dims {dims} and dims_decoder {dims_decoder} "
                "must have the same, non-zero length"
            )
        if any(d < 0 for d in depths + depths_decoder):
            raise ValueError(f"depths must be >= 0, got {depths} / {depths_decoder}")
        if any(b != 2 * a for a, b in zip(dims, dims[1:])):
            raise ValueError(f"each stage must double the width (PatchMerging C -> 2C), got dims {dims}")
        if dims_decoder != dims[::-1]:
            raise ValueError(f"dims_decoder must be dims reversed for the additive skips, got {dims_decoder} for {dims}")

    # The official VSSM._init_weights: Linear trunc-normal(0.02) / bias 0, LayerNorm 1 / 0; Conv2d
    # deliberately keeps its default init.
    _init_weights = staticmethod(init_trunc_normal_)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a :class:`ModelInputError` unless both sides are positive multiples of ``size_multiple``."""
        _check_spatial(height, width, self.size_multiple, self.patch_size, self.num_layers)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)  # the stage INPUT: s0 (patch embedding), s1, s2, s3
            x = layer(x)
        return x, skips

    def forward_features_up(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, layer in enumerate(self.layers_up):
            # Stage i >= 1 adds s_{n-i} before its PatchExpand; skips[0] (s0) is never read.
            x = layer(x if i == 0 else x + skips[-i])
        return x

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_up(x).permute(0, 3, 1, 2)
        return self.final_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ModelInputError(f"VSSM expects a 4-D (batch, channels, height, width) tensor, got shape {tuple(x.shape)}")
        self.check_input_size(x.shape[-2], x.shape[-1])
        x, skips = self.forward_features(x)
        x = self.forward_features_up(x, skips)
        return self.forward_final(x)


class VMUNet(nn.Module):
    """VM-UNet (Ruan & Xiang 2024): the official thin wrapper around :class:`VSSM`.

    The network lives in ``self.vmunet`` so that every ``state_dict`` key starts with
    ``vmunet.``, as in official checkpoints (``model.load_state_dict(sd, strict=True)`` works).

    Defaults are the PAPER configuration (``configs/config_setting.py``): encoder depths
    [2,2,2,2], decoder [2,2,2,1], dims 96-768, d_state 16, expand 2, dt_rank "auto", d_conv 3,
    drop_path_rate 0.2 —
    27,427,561 parameters for one class, 27,427,761 for nine. (The official ``VMUNet()``
    defaults, depths [2,2,9,2] / [2,9,2,2], build a different 44.27 M network.)

    Output: **logits of shape (B, num_classes, H, W) for every num_classes.** The official
    wrapper returns ``sigmoid(logits)`` when ``num_classes == 1`` (and trains with
    ``nn.BCELoss``); here apply the sigmoid yourself or use ``BCEWithLogitsLoss``, which is the
    same loss computed stably.

    Input: (B, C, H, W) with H and W multiples of 32 (H != W allowed). With ``in_chans=3`` a
    1-channel input (Synapse CT) is repeated to 3 channels, as the official wrapper does. Any
    other channel count, other sizes, or a non-4D tensor raise a :class:`ModelInputError`.
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        depths: Sequence[int] = PAPER_DEPTHS,
        depths_decoder: Sequence[int] = PAPER_DEPTHS_DECODER,
        dims: int | Sequence[int] = PAPER_DIMS,
        d_state: int = 16,
        expand: float = 2,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.vmunet = VSSM(
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            depths=depths,
            depths_decoder=depths_decoder,
            dims=dims,
            d_state=d_state,
            expand=expand,
            dt_rank=dt_rank,
            d_conv=d_conv,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            patch_norm=patch_norm,
            use_checkpoint=use_checkpoint,
        )

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_channels(x, self.in_chans, "VMUNet")
        self.vmunet.check_input_size(x.shape[-2], x.shape[-1])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, num_classes, H, W) logits (never a sigmoid)."""
        return self.vmunet(self._prepare_input(x))

    def load_from(self, path: str | PathLike[str] | Mapping[str, Any], map_location: Any = "cpu") -> PretrainedLoadReport:
        """Initialise encoder and decoder from a VMamba-S v0 checkpoint (see :func:`load_pretrained_vmamba`)."""
        return load_pretrained_vmamba(self, path, map_location=map_location)


# --------------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------------


def _load_state(path: str | PathLike[str] | Mapping[str, Any], map_location: Any, entries: tuple[str, ...]):
    obj = read_checkpoint(path, map_location)  # a mapping is returned as it is
    return state_dict_in(obj, path, entries)


@dataclass
class PretrainedLoadReport:
    """What :func:`load_pretrained_vmamba` copied, mirroring the official ``load_from`` printout.

    ``encoder_loaded`` / ``decoder_loaded`` are the "update:" counts of the two official passes
    (117 and 91 for VMamba-S v0 into the paper configuration). Key names are VSSM names (no
    ``vmunet.`` prefix); skipped entries are checkpoint names (pass 2: after renaming).
    """

    source: str
    checkpoint_keys: int
    model_keys: int
    encoder_keys: list[str] = field(default_factory=list)
    decoder_keys: list[str] = field(default_factory=list)
    encoder_skipped: list[str] = field(default_factory=list)
    decoder_candidates: int = 0
    decoder_skipped: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)

    @property
    def encoder_loaded(self) -> int:
        return len(self.encoder_keys)

    @property
    def decoder_loaded(self) -> int:
        return len(self.decoder_keys)

    def summary(self) -> str:
        lines = [
            f"VMamba weights from {self.source}",
            f"  pass 1 (encoder): model {self.model_keys}, checkpoint {self.checkpoint_keys}, loaded {self.encoder_loaded}",
            f"  pass 2 (decoder): model {self.model_keys}, renamed {self.decoder_candidates}, loaded {self.decoder_loaded}",
            f"  model tensors left at init: {len(self.not_loaded)}",
        ]
        if self.shape_mismatches:
            lines.append(f"  skipped for shape mismatch: {len(self.shape_mismatches)}: {self.shape_mismatches}")
        return "\n".join(lines)

    __str__ = summary  # what the engine's log line shows


_LAYER_PREFIX = re.compile(r"^layers\.(\d+)\.")


def _decoder_name(key: str, num_layers: int) -> str | None:
    """Encoder name -> decoder name of the same width: ``layers.i.`` -> ``layers_up.(n-1-i).``.

    The official code renames by substring ('layers.0' -> 'layers_up.3', ...); anchoring the
    match at the start gives the same result on VMamba checkpoints without matching e.g. 'layers.10'.
    """
    match = _LAYER_PREFIX.match(key)
    if match is None or int(match.group(1)) >= num_layers:
        return None
    return f"layers_up.{num_layers - 1 - int(match.group(1))}." + key[match.end() :]


def load_pretrained_vmamba(
    model: nn.Module,
    path: str | PathLike[str] | Mapping[str, Any],
    map_location: Any = "cpu",
) -> PretrainedLoadReport:
    """Initialise VM-UNet from VMamba-S v0 ImageNet weights the way the official ``load_from`` does.

    Official ``VMUNet.load_from`` (``models/vmunet/vmunet.py:34-76``); the weights are VMamba's
    ``vssmsmall_dp03_ckpt_epoch_238.pth`` (release ``#v0cls``), which the official config names
    ``vmamba_small_e238_ema.pth``.

    ``path`` is a checkpoint file (read with ``weights_only=True``; the state dict is taken from
    ``ckpt["model"]`` or the file is a bare state dict) or an already loaded dict.

    * Pass 1 (encoder): every checkpoint tensor whose name exists in the VSSM state dict
      (``patch_embed.*``, ``layers.i.blocks.j.*`` for j < depth_i, ``layers.{0,1,2}.downsample.*``);
      surplus blocks and the classifier ``norm.*`` / ``head.*`` are ignored.
    * Pass 2 (decoder): ``layers.i.*`` renamed to ``layers_up.(3-i).*`` (same width), loaded where
      the name exists; renamed ``downsample`` keys do not exist and are dropped.
    * ``upsample.*``, ``final_up.*``, ``final_conv.*`` keep their initial values.

    Unlike the official code, a tensor whose shape differs is skipped and listed in
    ``shape_mismatches`` instead of aborting the load. ``model`` is a :class:`VMUNet` or its
    ``.vmunet``. Returns a :class:`PretrainedLoadReport`.
    """
    vssm = inner_module(model, "vmunet", VSSM, "VMUNet")
    state = _load_state(path, map_location, ("model",))
    own = vssm.state_dict()
    report = PretrainedLoadReport(source=describe(path), checkpoint_keys=len(state), model_keys=len(own))

    def take(src_key: str, dst_key: str, loaded: list[str], updates: dict[str, torch.Tensor]) -> None:
        mismatch = shape_mismatch(f"{src_key} -> {dst_key}", state[src_key], own[dst_key])
        if mismatch is not None:
            report.shape_mismatches.append(mismatch)
            return
        updates[dst_key] = state[src_key]
        loaded.append(dst_key)

    encoder: dict[str, torch.Tensor] = {}
    for key in state:
        if key in own:
            take(key, key, report.encoder_keys, encoder)
        else:
            report.encoder_skipped.append(key)
    vssm.load_state_dict(encoder, strict=False)

    decoder: dict[str, torch.Tensor] = {}
    for key in state:
        new_key = _decoder_name(key, vssm.num_layers)
        if new_key is None:
            continue
        report.decoder_candidates += 1
        if new_key in own:
            take(key, new_key, report.decoder_keys, decoder)
        else:
            report.decoder_skipped.append(new_key)
    vssm.load_state_dict(decoder, strict=False)

    loaded = set(report.encoder_keys) | set(report.decoder_keys)
    report.not_loaded = [k for k in own if k not in loaded]
    log.info("%s", report.summary())
    return report


def load_vmunet_checkpoint(
    model: nn.Module,
    path: str | PathLike[str] | Mapping[str, Any],
    map_location: Any = "cpu",
    strict: bool = True,
):
    """Load an official VM-UNet checkpoint (``vmunet.``-prefixed keys) with ``weights_only=True``.

    Accepts a bare state dict (the official ``best.pth``), or one under ``model_state_dict``
    (the official ``latest.pth``), ``model`` or ``state_dict``; a DataParallel ``module.`` prefix
    (Synapse training) is removed. ``model`` is a :class:`VMUNet`, or its ``.vmunet`` (the
    ``vmunet.`` prefix is then removed too). Returns ``load_state_dict``'s result.
    """
    state = _load_state(path, map_location, ("model_state_dict", "model", "state_dict"))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if isinstance(model, VSSM):
        state = {k.removeprefix("vmunet."): v for k, v in state.items()}
    return model.load_state_dict(state, strict=strict)


# --------------------------------------------------------------------------------------------
# Registration: the recipe of configs/config_setting{,_synapse}.py and train{,_synapse}.py; the
# published rows of the paper's Tables I and II (arXiv 2402.02491).
# --------------------------------------------------------------------------------------------

_SRC_T1 = "VM-UNet paper Table I (via third-party copies; DSC/mIoU also ablation Table III, VM-UNet #45)"
_PUBLISHED = (
    PublishedResult(
        dataset="isic2017",
        # Acc/Spe/Sen for ISIC17 come from a third-party copy, not yet checked against the paper.
        metrics={"miou": 80.23, "dsc": 89.03, "acc": 96.29, "spe": 97.58, "sen": 89.90},
        source=_SRC_T1 + "; Acc/Spe/Sen unverified",
    ),
    PublishedResult(
        dataset="isic2018",
        metrics={"miou": 81.35, "dsc": 89.71, "acc": 94.91, "spe": 96.13, "sen": 91.12},
        source=_SRC_T1,
    ),
    PublishedResult(
        dataset="synapse",
        # DSC in %, HD95 in voxels; per-organ DSC in the paper's column order.
        metrics={
            "dsc": 81.08,
            "hd95": 19.21,
            "dsc_aorta": 86.40,
            "dsc_gallbladder": 69.41,
            "dsc_kidney_l": 86.16,
            "dsc_kidney_r": 82.76,
            "dsc_liver": 94.17,
            "dsc_pancreas": 58.80,
            "dsc_spleen": 89.51,
            "dsc_stomach": 81.40,
        },
        source="VM-UNet paper Table II (third-party copy; mean row matches a second table)",
    ),
)

_RECIPE: dict[str, Any] = {
    "source": "JCruan519/VM-UNet@43c495b configs/config_setting{,_synapse}.py, train{,_synapse}.py",
    "optimizer": {
        "name": "AdamW",
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 1e-2,
        "amsgrad": False,
        "param_groups": "one group; norms, biases, A_logs and Ds are decayed too",
    },
    "scheduler": {"name": "CosineAnnealingLR", "eta_min": 1e-5, "step": "epoch"},  # T_max per dataset
    "epochs": 300,
    "batch_size": 32,
    "seed": 42,
    "amp": False,
    "grad_clip": None,
    "ema": False,
    "warmup_epochs": 0,
    "drop_path_rate": 0.2,
    "pretrained": "VMamba-S v0 ImageNet-1K (vmamba_small_e238_ema.pth), load_pretrained_vmamba",
    "datasets": {
        "isic2017": {
            "num_classes": 1,
            "input_size": (256, 256),
            "T_max": 50,
            "loss": "BceDiceLoss(wb=1, wd=1): BCE on sigmoid + soft Dice",
            "val_interval": 30,
            "selection": "lowest val loss (val = test split)",
        },
        "isic2018": {
            "num_classes": 1,
            "input_size": (256, 256),
            "T_max": 50,
            "loss": "BceDiceLoss(wb=1, wd=1): BCE on sigmoid + soft Dice",
            "val_interval": 30,
            "selection": "lowest val loss (val = test split)",
        },
        "synapse": {
            "num_classes": 9,
            "input_size": (224, 224),
            "T_max": 100,
            "loss": "CeDiceLoss(9, loss_weight=[1, 1]): CE on logits + soft Dice over all 9 classes",
            "val_interval": 100,
            "selection": "lowest mean training loss of an epoch",
        },
    },
}


@register_model(
    "vmunet",
    family="vmunet",
    paper=PAPER,
    mamba_parts=True,  # ablation twins: name~no-ssm, name~no-mamba
    input_size=(256, 256),
    description="VM-UNet, paper configuration: enc [2,2,2,2], dec [2,2,2,1], dims 96-768, d_state 16; "
    "27.43 M parameters; returns logits",
    published=_PUBLISHED,
    recipe=_RECIPE,
    load_pretrained=load_pretrained_vmamba,  # model.pretrained: a VMamba-S v0 ImageNet checkpoint
)
def vmunet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> VMUNet:
    """Build VM-UNet in the paper configuration; ``overrides`` go to :class:`VMUNet`."""
    return VMUNet(num_classes=num_classes, in_chans=in_chans, **overrides)
