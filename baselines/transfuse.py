"""TransFuse-S (Zhang, Liu, Hu; MICCAI 2021) as the authors' ``lib/TransFuse.py`` builds it.

Reference code: ``Rayicer/TransFuse`` at ``3f50ab6``, ``lib/TransFuse.py`` (``TransFuse_S``,
``BiFusion_block``, ``Up``, ``Attention_block``, ``init_weights``), ``lib/DeiT.py``,
``lib/vision_transformer.py`` and ``train_isic.py`` (read for facts; nothing copied). Paper:
arXiv 2102.08005.

Structure, for the native 3x192x256 input:

* CNN branch ``resnet``: torchvision ResNet-34 without ``layer4`` / ``fc`` (:mod:`baselines.resnet`);
  layer1 -> c2 (64, 1/4), layer2 -> c1 (128, 1/8), layer3 -> c0 (256, 1/16).
* Transformer branch ``transformer``: DeiT-S with **depth 8**, no cls token in the sequence,
  a (1, 12*16, 384) position embedding (:mod:`baselines.vit`); tokens -> t0 (384, 1/16);
  ``up1`` -> t1 (128, 1/8), ``up2`` -> t2 (64, 1/4). Dropout2d(0.2) after every branch stage.
* Three BiFusion blocks ``up_c`` (1/16), ``up_c_1_1`` (1/8), ``up_c_2_1`` (1/4); two attention-
  gated up-steps ``up_c_1_2``, ``up_c_2_2``; three heads ``final_x`` (on f0, x16), ``final_1``
  (on t2, x4), ``final_2`` (on the fused 1/4 map, x4).

26,248,725 parameters for one class at 192x256 (598 ``state_dict`` entries, the key names of the
released ``TransFuse-19_best.pth``, which loads with ``strict=True``); 26,262,573 for nine
classes; 26,273,301 for one class at 256x256 (the 16x16 position embedding adds 64x384).

Outputs are **logits**. :class:`TransFuseOutput` names the three heads in the official return
order ``(map_x, map_1, map_2)``; the training loss is ``0.5 L(map_2) + 0.3 L(map_1) + 0.2 L(map_x)``
and inference uses ``map_2``. ``model(x)`` returns all three in ``train()`` mode when
``model.deep_supervision`` is True (default) and ``map_2`` alone otherwise (always in ``eval()``);
:meth:`TransFuseS.forward_all` returns all three in any mode.

Deliberate differences from the reference code:

* inputs must have exactly the size the model was built for (``img_size``; the reference
  hard-codes a 12x16 token ``.view`` and fails obscurely otherwise) and 3 channels, or 1 channel
  which is repeated to 3; anything else raises :class:`vmbench.errors.ModelInputError`;
* ``img_size`` is a constructor argument: ``img_size=(256, 256)`` builds the 16x16 position
  embedding of the 256x256 variant behind the MALUNet/EGE-UNet ISIC rows that VM-UNet's Table I
  copies ("26.16M / 11.50 GFLOPs" there: the official 192x256 code cannot take 256x256);
* the output up-sampling's ``align_corners`` is a switch, ``head_align_corners`` (True as at
  ``3f50ab6``, after the third-party pull request #2; the authors' 2021 code, which produced the
  released checkpoint, used the default False);
* building the model never reads a file (the reference's ``pretrained=True`` reads two inside the
  constructor). Pretrained weights load afterwards through :func:`load_transfuse_pretrained`, the
  registry's ``load_pretrained`` hook, from one local path (``model.pretrained``):

  - a **folder** holding the two ImageNet files the reference reads from its ``pretrained/``
    folder, ``resnet34-333f7ec4.pth`` (torchvision) and ``deit_small_patch16_224-cd65a155.pth``
    (facebookresearch/deit), loaded by :func:`load_pretrained_resnet34` and
    :func:`load_pretrained_deit_small`;
  - a **file**: a trained TransFuse-S checkpoint (the released ``TransFuse-19_best.pth`` or one
    saved from this model), loaded by :func:`load_transfuse_checkpoint`.

  Every file is read with ``torch.load(weights_only=True)``; each loader returns a
  :class:`LoadReport` instead of loading silently.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from baselines.att_unet import AttentionBlock
from baselines.resnet import RESNET34_LAYERS, ResNet
from baselines.vit import DeiTEncoder, resize_pos_embed
from vmbench.checkpoints import CheckpointFormatError, describe, read_checkpoint
from vmbench.errors import CheckpointError, ConfigError, ModelInputError, few
from vmbench.models.layers import check_image_channels, to_2tuple
from vmbench.models.loading import inner_module, shape_mismatch, state_dict_in
from vmbench.registry import PublishedResult, register_model

log = logging.getLogger(__name__)

__all__ = [
    "DEEP_SUPERVISION_WEIGHTS",
    "IMAGENET_FILES",
    "BiFusionBlock",
    "Conv",
    "DoubleConv",
    "LoadReport",
    "Residual",
    "TransFuseOutput",
    "TransFusePretrainedReport",
    "TransFuseS",
    "Up",
    "load_pretrained_deit_small",
    "load_pretrained_resnet34",
    "load_transfuse_checkpoint",
    "load_transfuse_pretrained",
    "transfuse_s",
]

PAPER = (
    "Y. Zhang, H. Liu, Q. Hu. TransFuse: Fusing Transformers and CNNs for Medical Image Segmentation. "
    "MICCAI 2021 (arXiv:2102.08005); code: github.com/Rayicer/TransFuse"
)

#: Loss weight of each head in the official ``train_isic.py``: ``0.5 * loss2 + 0.3 * loss3 + 0.2 * loss4``
#: for its ``(lateral_map_4, lateral_map_3, lateral_map_2)`` = (map_x, map_1, map_2).
DEEP_SUPERVISION_WEIGHTS: dict[str, float] = {"map_x": 0.2, "map_1": 0.3, "map_2": 0.5}

NATIVE_SIZE: tuple[int, int] = (192, 256)


# --------------------------------------------------------------------------------------------
# Building blocks (names follow lib/TransFuse.py so state_dict keys match).
# --------------------------------------------------------------------------------------------


class Conv(nn.Module):
    """k x k conv ('same' padding) with optional BatchNorm and ReLU; keys ``conv.*`` / ``bn.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, bn: bool = False, relu: bool = True, bias: bool = True):
        super().__init__()
        self.in_ch = in_ch
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)
        self.relu = nn.ReLU(inplace=True) if relu else None
        self.bn = nn.BatchNorm2d(out_ch) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class Residual(nn.Module):
    """Pre-activation bottleneck (BN-ReLU-1x1 -> BN-ReLU-3x3 -> BN-ReLU-1x1) plus a 1x1 ``skip_layer``.

    ``skip_layer`` always exists (it is in the checkpoint) but is only used when the widths differ.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = Conv(in_ch, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = Conv(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = Conv(mid, out_ch, 1, relu=False)
        self.skip_layer = Conv(in_ch, out_ch, 1, relu=False)
        self.need_skip = in_ch != out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.skip_layer(x) if self.need_skip else x
        y = self.conv1(self.relu(self.bn1(x)))
        y = self.conv2(self.relu(self.bn2(y)))
        y = self.conv3(self.relu(self.bn3(y)))
        return y + shortcut


class BiFusionBlock(nn.Module):
    """BiFusion (``BiFusion_block``): fuses CNN features ``g`` (ch_1) with transformer features ``x`` (ch_2).

    * bilinear term ``W(W_g(g) * W_x(x))``;
    * spatial attention on ``g``: [channel max, channel mean] -> 7x7 conv + BN -> sigmoid, times ``g``;
    * SE channel attention on ``x``: global average -> ``fc1`` -> ReLU -> ``fc2`` -> sigmoid, times ``x``;
    * ``residual`` on the concatenation, then Dropout2d(``drop_rate``) when it is > 0.
    """

    def __init__(self, ch_1: int, ch_2: int, r_2: int, ch_int: int, ch_out: int, drop_rate: float = 0.0):
        super().__init__()
        if ch_2 % r_2:
            raise ValueError(f"BiFusion: transformer width {ch_2} is not divisible by the SE ratio {r_2}")
        self.fc1 = nn.Conv2d(ch_2, ch_2 // r_2, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(ch_2 // r_2, ch_2, kernel_size=1)
        self.sigmoid = nn.Sigmoid()
        self.spatial = Conv(2, 1, 7, bn=True, relu=False, bias=False)
        self.W_g = Conv(ch_1, ch_int, 1, bn=True, relu=False)
        self.W_x = Conv(ch_2, ch_int, 1, bn=True, relu=False)
        self.W = Conv(ch_int, ch_int, 3, bn=True, relu=True)
        self.residual = Residual(ch_1 + ch_2 + ch_int, ch_out)
        self.dropout = nn.Dropout2d(drop_rate)
        self.drop_rate = drop_rate

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        bp = self.W(self.W_g(g) * self.W_x(x))
        pooled = torch.cat([g.amax(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)], dim=1)
        g = self.sigmoid(self.spatial(pooled)) * g
        se = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        x = self.sigmoid(se) * x
        fused = self.residual(torch.cat([g, x, bp], dim=1))
        return self.dropout(fused) if self.drop_rate > 0 else fused


class DoubleConv(nn.Module):
    """ReLU([3x3 conv-BN-ReLU-3x3 conv-BN](x) + [1x1 conv-BN](x))."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_ch),
        )
        self.identity = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1), nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.double_conv(x) + self.identity(x))


class Up(nn.Module):
    """x2 bilinear up-sampling (``align_corners=True``) then :class:`DoubleConv`.

    With a skip ``x2``: the skip is gated by the up-sampled map when ``attn`` (``attn_block``: the
    reference's ``Attention_block``, LeeJunHyun's gate, i.e. :class:`baselines.att_unet.AttentionBlock`),
    and ``cat([x2, up(x1)])`` goes through the DoubleConv (``in_ch1 + in_ch2 -> out_ch``).
    """

    def __init__(self, in_ch1: int, out_ch: int, in_ch2: int = 0, attn: bool = False):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_ch1 + in_ch2, out_ch)
        self.attn_block = AttentionBlock(in_ch1, in_ch2, out_ch) if attn else None

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        x1 = self.up(x1)
        if x2 is not None:
            # The reference pads x1 to x2's size here; with the input size enforced by TransFuseS
            # the two always agree, so a mismatch is a bug worth an error, not silent padding.
            if x1.shape[-2:] != x2.shape[-2:]:
                raise RuntimeError(f"Up: up-sampled map {tuple(x1.shape)} does not match skip {tuple(x2.shape)}")
            if self.attn_block is not None:
                x2 = self.attn_block(x1, x2)
            x1 = torch.cat([x2, x1], dim=1)
        return self.conv(x1)


def _decoder_init(m: nn.Module) -> None:
    """TransFuse ``init_weights``: Kaiming-normal (fan_in, ReLU) convs, U(+-1/sqrt(fan_in)) bias, BN 1/0."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            fan_in = m.weight.shape[1] * m.weight[0, 0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(m.bias, -bound, bound)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------------


class TransFuseOutput(NamedTuple):
    """The three deep-supervision logit maps, in the official return order (all at input size).

    * ``map_x``: head ``final_x`` on the 1/16 BiFusion output f0, up-sampled x16 (loss weight 0.2);
    * ``map_1``: head ``final_1`` on the transformer branch t2 (1/4), up-sampled x4 (weight 0.3);
    * ``map_2``: head ``final_2`` on the fused, attention-gated 1/4 map, up-sampled x4 (weight 0.5);
      **the prediction** used at inference.
    """

    map_x: torch.Tensor
    map_1: torch.Tensor
    map_2: torch.Tensor


class TransFuseS(nn.Module):
    """TransFuse-S: ResNet-34 (no layer4) + depth-8 DeiT-S, BiFusion, gated decoder, three heads.

    Args:
        num_classes: output channels of each head (1 for binary lesion segmentation).
        in_chans: image channels the stems take (3 for the pretrained weights). With 3, a
            1-channel input is repeated to 3 channels.
        img_size: (H, W) the model is built for, multiples of 16; (192, 256) is the official
            size, (256, 256) the variant of the ISIC tables. It fixes the position embedding's
            token grid (H/16 x W/16); other input sizes raise :class:`ModelInputError`.
        drop_rate: Dropout2d after every branch stage (0.2); the BiFusion blocks use half of it.
        depth, embed_dim, num_heads: transformer geometry (8 / 384 / 6 for TransFuse-S; smaller
            values only for tests and experiments: pretrained DeiT-S weights need 384 / 6).
        resnet_layers: BasicBlocks in layer1..layer3 (3, 4, 6 for ResNet-34).
        head_align_corners: ``align_corners`` of the x16 / x4 output up-sampling. True as at the
            reference HEAD; False reproduces the authors' 2021 code that trained the released
            checkpoint.
        deep_supervision: when True, ``forward`` returns a :class:`TransFuseOutput` in ``train()``
            mode. ``eval()`` mode always returns the ``map_2`` logits alone.
        normal_init: apply TransFuse's Kaiming init to the decoder and fusion modules.

    The constructor reads no file: pretrained weights load afterwards through
    :func:`load_transfuse_pretrained` (reports kept in ``pretrained_reports``).
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        img_size: int | Sequence[int] = NATIVE_SIZE,
        drop_rate: float = 0.2,
        depth: int = 8,
        embed_dim: int = 384,
        num_heads: int = 6,
        resnet_layers: Sequence[int] = RESNET34_LAYERS[:3],
        head_align_corners: bool = True,
        deep_supervision: bool = True,
        normal_init: bool = True,
    ):
        super().__init__()
        h, w = to_2tuple(img_size, "img_size")
        if h <= 0 or w <= 0 or h % 16 or w % 16:
            raise ModelInputError(f"TransFuse-S needs an img_size whose sides are positive multiples of 16, got {h}x{w}")
        if num_classes < 1 or in_chans < 1:
            raise ModelInputError(f"num_classes and in_chans must be >= 1, got {num_classes} / {in_chans}")
        if len(resnet_layers) != 3:
            raise ValueError(f"resnet_layers gives the blocks of layer1..layer3, got {tuple(resnet_layers)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = (h, w)
        self.grid_size = (h // 16, w // 16)
        self.deep_supervision = deep_supervision
        # Loss weights in the order of TransFuseOutput, read by vmbench's training engine.
        self.deep_supervision_weights = tuple(DEEP_SUPERVISION_WEIGHTS[name] for name in TransFuseOutput._fields)
        self.head_align_corners = head_align_corners
        # What load_transfuse_pretrained loaded, by part ("resnet", "transformer" or "checkpoint").
        self.pretrained_reports: dict[str, LoadReport] = {}

        self.resnet = ResNet((*resnet_layers, 1), in_chans=in_chans, layer4=False, fc=False)
        self.transformer = DeiTEncoder(
            img_size=self.img_size,
            patch_size=16,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            norm_eps=1e-6,
            pos_embed_init="zeros",  # as the reference DeiT subclass leaves it before loading
        )
        self.up1 = Up(embed_dim, 128)
        self.up2 = Up(128, 64)
        self.final_x = nn.Sequential(
            Conv(256, 64, 1, bn=True, relu=True),
            Conv(64, 64, 3, bn=True, relu=True),
            Conv(64, num_classes, 3, bn=False, relu=False),
        )
        self.final_1 = nn.Sequential(Conv(64, 64, 3, bn=True, relu=True), Conv(64, num_classes, 3, bn=False, relu=False))
        self.final_2 = nn.Sequential(Conv(64, 64, 3, bn=True, relu=True), Conv(64, num_classes, 3, bn=False, relu=False))
        self.up_c = BiFusionBlock(ch_1=256, ch_2=embed_dim, r_2=4, ch_int=256, ch_out=256, drop_rate=drop_rate / 2)
        self.up_c_1_1 = BiFusionBlock(ch_1=128, ch_2=128, r_2=2, ch_int=128, ch_out=128, drop_rate=drop_rate / 2)
        self.up_c_1_2 = Up(256, 128, 128, attn=True)
        self.up_c_2_1 = BiFusionBlock(ch_1=64, ch_2=64, r_2=1, ch_int=64, ch_out=64, drop_rate=drop_rate / 2)
        self.up_c_2_2 = Up(128, 64, 64, attn=True)
        self.drop = nn.Dropout2d(drop_rate)

        if normal_init:
            for name in ("up1", "up2", "final_x", "final_1", "final_2", "up_c", "up_c_1_1", "up_c_1_2", "up_c_2_1", "up_c_2_2"):
                getattr(self, name).apply(_decoder_init)

    # ---- input checks -----------------------------------------------------------------------

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_channels(x, self.in_chans, "TransFuse-S")
        h, w = x.shape[-2:]
        if (h, w) != self.img_size:
            eh, ew = self.img_size
            raise ModelInputError(
                f"TransFuse-S was built for {eh}x{ew} (HxW) inputs, got {h}x{w}; its position embedding "
                f"is fixed to a {eh // 16}x{ew // 16} token grid. Resize the input, or build the model "
                f"with img_size=({h}, {w}) (sides multiples of 16)."
            )
        return x

    # ---- forward ----------------------------------------------------------------------------

    def forward_all(self, x: torch.Tensor) -> TransFuseOutput:
        """All three head logits, whatever the mode (same computation order as the reference)."""
        x = self._prepare_input(x)
        b = x.shape[0]
        gh, gw = self.grid_size

        # transformer branch
        t0 = self.transformer(x).transpose(1, 2).reshape(b, -1, gh, gw)
        t0 = self.drop(t0)
        t1 = self.drop(self.up1(t0))
        t2 = self.drop(self.up2(t1))

        # CNN branch
        r = self.resnet
        c = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        c2 = self.drop(r.layer1(c))
        c1 = self.drop(r.layer2(c2))
        c0 = self.drop(r.layer3(c1))

        # fusion and gated decoder
        f0 = self.up_c(c0, t0)
        f1 = self.up_c_1_1(c1, t1)
        d1 = self.up_c_1_2(f0, f1)
        f2 = self.up_c_2_1(c2, t2)
        d2 = self.up_c_2_2(d1, f2)

        ac = self.head_align_corners
        map_x = F.interpolate(self.final_x(f0), scale_factor=16, mode="bilinear", align_corners=ac)
        map_1 = F.interpolate(self.final_1(t2), scale_factor=4, mode="bilinear", align_corners=ac)
        map_2 = F.interpolate(self.final_2(d2), scale_factor=4, mode="bilinear", align_corners=ac)
        return TransFuseOutput(map_x, map_1, map_2)

    def forward(self, x: torch.Tensor) -> TransFuseOutput | torch.Tensor:
        """Logits. ``train()`` with ``deep_supervision``: ``TransFuseOutput(map_x, map_1, map_2)``;
        otherwise (always in ``eval()``): the ``map_2`` tensor (B, num_classes, H, W)."""
        out = self.forward_all(x)
        if self.training and self.deep_supervision:
            return out
        return out.map_2


# --------------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a loader did. Key names are checkpoint names (after removing a ``module.`` prefix).

    * ``loaded``: copied into the model (``pos_embed`` is listed here and in ``resized``);
    * ``skipped``: left out by design (ResNet ``layer4.*`` / ``fc.*``; DeiT blocks >= depth, ``head.*``);
    * ``resized``: one line per interpolated tensor;
    * ``unexpected``: other checkpoint tensors with no model counterpart (not loaded);
    * ``missing``: model tensors the checkpoint lacks (kept at init; BatchNorm
      ``num_batches_tracked`` counters, absent from pre-0.4.1 files like ``resnet34-333f7ec4.pth``,
      are not listed);
    * ``shape_mismatches``: present on both sides with different shapes (not loaded).
    """

    source: str
    target: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.shape_mismatches)

    def summary(self) -> str:
        lines = [
            f"{self.source} -> {self.target}: loaded {len(self.loaded)}, skipped {len(self.skipped)}, "
            f"resized {len(self.resized)}, unexpected {len(self.unexpected)}, missing {len(self.missing)}, "
            f"shape mismatches {len(self.shape_mismatches)}"
        ]
        lines += [f"  resized {r}" for r in self.resized]
        for name in ("unexpected", "missing", "shape_mismatches"):
            if getattr(self, name):
                lines.append(f"  {name}: {getattr(self, name)}")
        return "\n".join(lines)

    __str__ = summary  # what the engine's log line shows


def _state_dict_from(path: Any, entries: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (read with weights_only=True), DataParallel's ``module.`` removed."""
    state = state_dict_in(read_checkpoint(path), path, entries)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _take(key: str, tensor: torch.Tensor, own: Mapping[str, torch.Tensor], updates: dict, report: LoadReport) -> None:
    """Queue ``tensor`` for ``key`` if the shapes agree, else list the mismatch."""
    mismatch = shape_mismatch(key, tensor, own[key])
    if mismatch is not None:
        report.shape_mismatches.append(mismatch)
        return
    updates[key] = tensor
    report.loaded.append(key)


def _finish(
    module: nn.Module, report: LoadReport, updates: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], strict: bool
) -> LoadReport:
    # Tensors present on both sides but skipped for their shape are listed in shape_mismatches only.
    accounted = set(updates) | {m.split(":", 1)[0] for m in report.shape_mismatches}
    report.missing = [k for k in own if k not in accounted and not k.endswith("num_batches_tracked")]
    if strict and not report.ok:
        raise CheckpointFormatError(
            "refusing to load (strict=True; pass strict=False to load what fits):\n" + report.summary()
        )
    module.load_state_dict(updates, strict=False)
    log.info("%s", report.summary())
    return report


def load_pretrained_resnet34(
    model: nn.Module, path: str | PathLike[str] | Mapping[str, Any], strict: bool = True
) -> LoadReport:
    """Load ImageNet ResNet-34 weights (torchvision names, e.g. ``resnet34-333f7ec4.pth``) into ``model.resnet``.

    ``layer4.*`` and ``fc.*`` are skipped (TransFuse drops those modules) and listed in
    ``report.skipped``; everything else must match by name and shape, as the reference's strict
    load does: with ``strict=True`` (default) any unexpected, missing or mismatched tensor raises
    :class:`CheckpointFormatError` (a :class:`vmbench.errors.CheckpointError`) before anything is
    copied; with ``strict=False`` the matching tensors are loaded and the rest reported. ``path``
    is read with ``weights_only=True`` (a bare state dict, or one under ``state_dict`` /
    ``model``); an already loaded dict is accepted too.
    """
    resnet = inner_module(model, "resnet", ResNet, "TransFuseS")
    state = _state_dict_from(path, ("state_dict", "model"))
    own = resnet.state_dict()
    report = LoadReport(source=describe(path), target="resnet")
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(("layer4.", "fc.")):
            report.skipped.append(key)
        elif key not in own:
            report.unexpected.append(key)
        else:
            _take(key, tensor, own, updates, report)
    return _finish(resnet, report, updates, own, strict)


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _pos_embed_layout(n: int, own_tokens: int, own_grid: tuple[int, int], src_grid: Sequence[int] | None):
    """(prefix tokens, source grid) of a checkpoint position embedding with ``n`` entries."""
    if src_grid is not None:
        gh, gw = to_2tuple(src_grid, "src_grid")
        prefix = n - gh * gw
        if prefix not in (0, 1):
            raise CheckpointFormatError(f"pos_embed has {n} entries, which is not a {gh}x{gw} grid plus 0 or 1 cls entry")
        return prefix, (gh, gw)
    if n == own_tokens:  # already on this model's grid (e.g. from a TransFuse checkpoint)
        return 0, own_grid
    if _is_square(n - 1):  # DeiT / ViT: cls entry + square grid (197 = 1 + 14*14)
        s = math.isqrt(n - 1)
        return 1, (s, s)
    if n == own_tokens + 1:
        return 1, own_grid
    if _is_square(n):
        s = math.isqrt(n)
        return 0, (s, s)
    raise CheckpointFormatError(
        f"cannot tell the token grid of a pos_embed with {n} entries; pass src_grid=(H, W) of the checkpoint"
    )


def load_pretrained_deit_small(
    model: nn.Module,
    path: str | PathLike[str] | Mapping[str, Any],
    strict: bool = True,
    src_grid: Sequence[int] | None = None,
) -> LoadReport:
    """Load DeiT-S ImageNet weights (``deit_small_patch16_224-cd65a155.pth``, ``ckpt["model"]``) into ``model.transformer``.

    As the reference ``lib/DeiT.py`` (``deit_small_patch16_224(pretrained=True)``) does:

    * ``blocks.0`` .. ``blocks.{depth-1}`` load (0..7 for TransFuse-S); deeper blocks and the
      classifier ``head.*`` are skipped (the reference drops them silently with ``strict=False``);
    * ``cls_token`` loads unchanged (kept, though the forward never uses it);
    * ``pos_embed`` (1, 197, 384) loses its cls entry and its 14x14 grid is resized bilinearly
      (``align_corners=True``) to the model's token grid: 12x16 at 192x256, 16x16 at 256x256.
      Slicing and resizing the checkpoint tensor gives exactly the reference's load -> slice ->
      interpolate result. ``src_grid`` names the checkpoint's grid when it cannot be inferred.

    ``strict=True`` (default) raises :class:`CheckpointFormatError` for any other unexpected, missing or
    mismatched tensor before copying anything (a correct DeiT-S file has none); ``strict=False``
    loads what fits and reports the rest. Read with ``weights_only=True``.
    """
    vit = inner_module(model, "transformer", DeiTEncoder, "TransFuseS")
    state = _state_dict_from(path, ("model", "state_dict"))
    own = vit.state_dict()
    depth = len(vit.blocks)
    report = LoadReport(source=describe(path), target="transformer")
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        block = _BLOCK_KEY.match(key)
        if key.startswith("head.") or (block is not None and int(block.group(1)) >= depth):
            report.skipped.append(key)
            continue
        if key not in own:
            report.unexpected.append(key)
            continue
        if key == "pos_embed" and tensor.dim() == 3 and tensor.shape[-1] == own[key].shape[-1]:
            prefix, grid = _pos_embed_layout(tensor.shape[1], own[key].shape[1], vit.grid_size, src_grid)
            resized = resize_pos_embed(tensor, grid, vit.grid_size, num_prefix_tokens=prefix)
            if tuple(resized.shape) != tuple(tensor.shape) or prefix:
                dropped = "cls entry dropped, " if prefix else ""
                gh, gw = vit.grid_size
                report.resized.append(
                    f"pos_embed: {tuple(tensor.shape)} -> {tuple(resized.shape)} ({dropped}{grid[0]}x{grid[1]} -> "
                    f"{gh}x{gw} grid, bilinear, align_corners=True)"
                )
            tensor = resized
        _take(key, tensor, own, updates, report)
    return _finish(vit, report, updates, own, strict)


def load_transfuse_checkpoint(
    model: TransFuseS,
    path: str | PathLike[str] | Mapping[str, Any],
    strict: bool = True,
    src_grid: Sequence[int] = (12, 16),
) -> LoadReport:
    """Load a trained TransFuse-S checkpoint (e.g. the released ``TransFuse-19_best.pth``, 598 tensors).

    Keys are the model's own; a ``module.`` prefix is removed. If the model was built for
    another input size than the checkpoint (e.g. a 256x256 model and the 192x256 release), the
    checkpoint's ``transformer.pos_embed`` is resized from ``src_grid`` (12x16 for the release)
    to the model's grid and listed in ``report.resized``. ``strict=True`` raises
    :class:`CheckpointFormatError` on any other missing, unexpected or mismatched tensor. Note that
    the release was trained with ``head_align_corners=False`` (the authors' 2021 code).
    """
    if not isinstance(model, TransFuseS):
        raise TypeError(f"expected a TransFuseS, got {type(model).__name__}")
    state = _state_dict_from(path, ("state_dict", "model"))
    own = model.state_dict()
    report = LoadReport(source=describe(path), target="TransFuseS")
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if key == "transformer.pos_embed" and tuple(tensor.shape) != tuple(own[key].shape):
            grid = to_2tuple(src_grid, "src_grid")
            prefix = tensor.shape[1] - grid[0] * grid[1]
            if tensor.dim() == 3 and prefix in (0, 1) and tensor.shape[-1] == own[key].shape[-1]:
                resized = resize_pos_embed(tensor, grid, model.grid_size, num_prefix_tokens=prefix)
                report.resized.append(
                    f"{key}: {tuple(tensor.shape)} -> {tuple(resized.shape)} ({grid[0]}x{grid[1]} -> "
                    f"{model.grid_size[0]}x{model.grid_size[1]} grid, bilinear, align_corners=True)"
                )
                tensor = resized
        _take(key, tensor, own, updates, report)
    return _finish(model, report, updates, own, strict)


#: The ImageNet files the reference ``TransFuse_S(pretrained=True)`` reads from its ``pretrained/``
#: folder (``lib/TransFuse.py``, ``lib/DeiT.py``), by the branch each one initialises.
IMAGENET_FILES: dict[str, str] = {
    "resnet": "resnet34-333f7ec4.pth",
    "transformer": "deit_small_patch16_224-cd65a155.pth",
}


@dataclass
class TransFusePretrainedReport:
    """What :func:`load_transfuse_pretrained` loaded: one :class:`LoadReport` per part
    (``"resnet"`` and ``"transformer"`` from a folder, ``"checkpoint"`` from a TransFuse-S file)."""

    source: str
    parts: dict[str, LoadReport]

    @property
    def ok(self) -> bool:
        return all(report.ok for report in self.parts.values())

    def summary(self) -> str:
        return "\n".join(report.summary() for report in self.parts.values())

    __str__ = summary  # what the engine's log line shows


def load_transfuse_pretrained(
    model: nn.Module, path: str | PathLike[str] | Mapping[str, Any]
) -> TransFusePretrainedReport:
    """TransFuse-S's pretrained weights from one local path (the registry's ``load_pretrained`` hook).

    * ``path`` is a **folder**: it must hold both files of :data:`IMAGENET_FILES`, the ones the
      reference's ``pretrained=True`` reads from ``pretrained/``: ``resnet34-333f7ec4.pth``
      (torchvision ResNet-34) into ``model.resnet`` through :func:`load_pretrained_resnet34`, and
      ``deit_small_patch16_224-cd65a155.pth`` (DeiT-S) into ``model.transformer`` through
      :func:`load_pretrained_deit_small`; the decoder keeps its initialisation.
    * ``path`` is a **file** (or an already loaded dict): a trained TransFuse-S checkpoint, e.g. the
      released ``TransFuse-19_best.pth``, through :func:`load_transfuse_checkpoint`.

    Every load is strict (a tensor that does not fit raises :class:`CheckpointFormatError` before
    that part is copied) and reads with ``weights_only=True``. A path that is neither, or a folder
    without both files, raises :class:`vmbench.errors.CheckpointError`. The per-part reports are
    also kept in ``model.pretrained_reports``.
    """
    if not isinstance(model, TransFuseS):
        raise TypeError(f"expected a TransFuseS, got {type(model).__name__}")
    wanted = " and ".join(IMAGENET_FILES.values())
    if isinstance(path, Mapping) or Path(path).is_file():
        parts = {"checkpoint": load_transfuse_checkpoint(model, path)}
    elif Path(path).is_dir():
        folder = Path(path)
        missing = [name for name in IMAGENET_FILES.values() if not (folder / name).is_file()]
        if missing:
            found = few(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise CheckpointError(
                f"pretrained folder '{folder}' for TransFuse-S lacks {' and '.join(missing)}: it must hold the "
                f"ImageNet files {wanted} (found {found})"
            )
        parts = {
            "resnet": load_pretrained_resnet34(model, folder / IMAGENET_FILES["resnet"]),
            "transformer": load_pretrained_deit_small(model, folder / IMAGENET_FILES["transformer"]),
        }
    else:
        raise CheckpointError(
            f"pretrained weights '{path}' for TransFuse-S: no such file or folder; give a folder holding {wanted} "
            "(ImageNet initialisation) or a TransFuse-S checkpoint file"
        )
    model.pretrained_reports = dict(parts)
    return TransFusePretrainedReport(source=describe(path), parts=parts)


# --------------------------------------------------------------------------------------------
# Registration: the recipe of train_isic.py; published rows of the TransFuse paper (its ISIC2017
# result) and of VM-UNet's Table I.
# --------------------------------------------------------------------------------------------

_PUBLISHED = (
    PublishedResult(
        dataset="isic2017",
        # P2: per-image mean over the official 600-image test set at 192x256 (test_isic.py averages
        # the metrics image by image); keyed *_per_image so it is never mixed with the pooled (P1)
        # columns, and labelled with its own protocol (a key of vmbench.leaderboard.PROTOCOLS) so
        # that it gets its own leaderboard table instead of sitting in the P1 "paper" one: pooled
        # and per-image numbers on different splits are not comparable.
        metrics={"iou_per_image": 79.5, "dice_per_image": 87.2, "acc_per_image": 94.4},
        source="TransFuse paper (MICCAI 2021), TransFuse-S, official ISIC2017 split (2000/150/600), 192x256, "
        "protocol P2 (per-image mean Jaccard/Dice/Acc); unverified",
        protocol="paper-p2",
    ),
    PublishedResult(
        dataset="isic2017",
        metrics={"miou": 79.21, "dsc": 88.40, "acc": 96.17, "spe": 97.98, "sen": 87.14},
        source="VM-UNet Table I <- MALUNet/EGE-UNet: TransFuse-S modified to 256x256 (img_size=(256, 256)), "
        "7:3 split, protocol P1 (pooled confusion matrix); unverified",
    ),
    PublishedResult(
        dataset="isic2018",
        metrics={"miou": 80.63, "dsc": 89.27, "acc": 94.66, "spe": 95.74, "sen": 91.28},
        source="VM-UNet Table I <- MALUNet/EGE-UNet: TransFuse-S modified to 256x256 (img_size=(256, 256)), "
        "7:3 split, protocol P1 (pooled confusion matrix); unverified",
    ),
)

_RECIPE: dict[str, Any] = {
    "source": "official train_isic.py (Rayicer/TransFuse@3f50ab6, unchanged since a076f2e; grad_norm 2.0)",
    "optimizer": {"name": "Adam", "lr": 7e-5, "betas": (0.5, 0.999), "weight_decay": 0.0},
    "scheduler": None,
    "epochs": 25,
    "batch_size": 16,
    "grad_clip": 2.0,  # clip_grad_norm_ max norm, every step
    "amp": False,
    "ema": False,
    "drop_rate": 0.2,
    "input_size": NATIVE_SIZE,
    "loss": "structure_loss (PraNet) as its code computes it: mean BCE-with-logits + boundary-weighted IoU, per head",
    "loss_weights": dict(DEEP_SUPERVISION_WEIGHTS),  # 0.5 map_2 + 0.3 map_1 + 0.2 map_x
    "inference_output": "map_2",
    "normalization": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "augmentation": "ShiftScaleRotate(0.15, 0.15, 25 deg, p=0.5, border 0), ColorJitter, HorizontalFlip, VerticalFlip",
    "pretrained": {
        "resnet": "torchvision resnet34-333f7ec4.pth -> load_pretrained_resnet34",
        "transformer": "DeiT-S deit_small_patch16_224-cd65a155.pth ckpt['model'] -> load_pretrained_deit_small",
        "model.pretrained": "a folder holding both files, or a TransFuse-S checkpoint (load_transfuse_pretrained)",
    },
    "selection": "lowest mean structure loss of map_2 on the 150-image val split, checked every epoch",
    "datasets": {
        "isic2017": {
            "num_classes": 1,
            "input_size": NATIVE_SIZE,
            "split": "official 2000/150/600",
            "protocol": "P2 (per-image mean Dice/IoU, threshold 0.5)",
        },
    },
    "variants": {
        "isic_256": {
            "img_size": (256, 256),
            "note": "the VM-UNet/MALUNet ISIC17/18 rows (P1, 7:3 split); their training settings are unpublished",
        },
    },
}


@register_model(
    "transfuse-s",
    family="transfuse",
    paper=PAPER,
    input_size=NATIVE_SIZE,
    description="TransFuse-S: ResNet-34 (no layer4) + depth-8 DeiT-S, BiFusion, gated decoder, 3 heads; "
    "26,248,725 params at 192x256 (img_size=(256, 256) for the ISIC-table variant); returns logits "
    "(train: (map_x, map_1, map_2), eval: map_2); model.pretrained: a folder holding resnet34-333f7ec4.pth "
    "and deit_small_patch16_224-cd65a155.pth (ImageNet), or a TransFuse-S checkpoint file",
    published=_PUBLISHED,
    recipe=_RECIPE,
    load_pretrained=load_transfuse_pretrained,
)
def transfuse_s(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> TransFuseS:
    """Build TransFuse-S; ``overrides`` go to :class:`TransFuseS` (e.g. ``img_size=(256, 256)``).

    Building reads no file: ImageNet or TransFuse-S weights load afterwards through
    :func:`load_transfuse_pretrained` (``model.pretrained``: a folder holding
    ``resnet34-333f7ec4.pth`` and ``deit_small_patch16_224-cd65a155.pth``, or a checkpoint file).
    """
    for old in ("resnet_weights", "deit_weights"):
        if old in overrides:
            raise ConfigError(
                f"model.overrides.{old}: TransFuse-S no longer reads weight files when it is built; set "
                f"model.pretrained to a folder holding {' and '.join(IMAGENET_FILES.values())} instead"
            )
    return TransFuseS(num_classes=num_classes, in_chans=in_chans, **overrides)
