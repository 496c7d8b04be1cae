"""VM-UNetV2 (Zhang et al., arXiv 2403.09157) as its official code builds it.

Source: nobodyplayer1/VM-UNetV2@b65f04c1, ``models/vmunet/vmunet_v2.py`` (the wrapper: CBAM-style
attention, 1x1 "Translayer" projections, four SDI skip-fusion modules, a transposed-conv decoder
with 1x1 heads) and ``models/vmunet/vmamba.py`` (the VMamba v0 encoder), trained with
``configs/config_setting_v2.py`` (depths [2, 2, 9, 2], drop-path 0.2, deep supervision on,
mid_channel 48). The encoder's SS2D, VSS block, patch embedding and patch merging are the same
code, with the same keys, as VM-UNet's, so they are reused from :mod:`vmbench.models.vmunet`;
the selective scan is vmbench's (``vmbench.ops.selective_scan``: cuda / triton / torch, chosen
by its dispatch), not ``mamba_ssm``.

Faithful on purpose, including the official code's quirks:

* ``state_dict`` keys, shapes and order as the official model (22,770,934 parameters for one
  class), so official checkpoints load with ``strict=True``.
* The encoder returns each stage's INPUT (patch embedding, then the outputs of stages 0-2), so
  stage 3 (``vmunet.layers.3``, 8.9 M parameters) never influences the output; ``seg_outs.0/1``
  and ``deconv5`` are never used either (DS on). These 8,948,834 parameters stay in the state
  dict and the count but never get a gradient.
* "Deep supervision" in the official code is not a multi-output loss: the forward returns ONE map,
  ``head_1/4(x) + deconv6(head_1/8(x))`` (both upsampled 4x first), in training and evaluation
  alike, and ``train.py`` applies one BceDiceLoss to it. ``deconv6`` is a 1 -> 1 transposed conv,
  so deep supervision needs ``num_classes == 1``; with more classes it is off (the official
  ``deep_supervision=False`` branch returns the 1/4-resolution head alone).
* Official init: the encoder's ``_init_weights`` (Linear trunc-normal 0.02, LayerNorm 1/0; convs
  and SS2D raw parameters keep their own init); every wrapper module keeps PyTorch's defaults.
* A 1-channel input is repeated to 3 channels.

Differences, all deliberate:

* Logits are returned; the official applies a sigmoid (DS on, or one class) and trains with
  ``nn.BCELoss``. vmbench's losses apply the sigmoid themselves.
* Work that cannot change the output is skipped: encoder stage 3 is not run (the official runs it
  and discards the result), and unused heads are not evaluated. Outputs and gradients are the
  same; only the random draws of stage 3's drop-path differ.
* Inputs the official code would crop or fail on deep inside (sides not multiples of 32,
  non-square images: SDI resizes every level to a square grid) raise ``ModelInputError``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vmbench.checkpoints import describe, read_checkpoint
from vmbench.errors import ConfigError
from vmbench.models.inputs import check_image_batch
from vmbench.models.layers import init_trunc_normal_
from vmbench.models.loading import inner_module, shape_mismatch, state_dict_in
from vmbench.models.vmunet import PatchEmbed2D, PatchMerging2D, VSSLayer
from vmbench.registry import register_model

__all__ = [
    "SDI",
    "BasicConv2d",
    "ChannelAttention",
    "EncoderLoadReport",
    "SpatialAttention",
    "VMUNetV2",
    "VSSEncoder",
    "load_pretrained_vmamba_encoder",
    "vmunet_v2",
]

log = logging.getLogger("vmbench.models")

PAPER = "VM-UNetV2: Rethinking Vision Mamba UNet for Medical Image Segmentation (Zhang et al., arXiv 2403.09157)"
OFFICIAL = "nobodyplayer1/VM-UNetV2@b65f04c1"

# configs/config_setting_v2.py: VMamba-S-like encoder depths, 96-768 channels.
PAPER_DEPTHS = (2, 2, 9, 2)
LEVELS = 4  # encoder stages = skip levels = SDI modules = heads


# --------------------------------------------------------------------------------------------
# Skip-path modules (models/vmunet/vmunet_v2.py).
# --------------------------------------------------------------------------------------------


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool) + MLP(maxpool)), shared 1x1-conv MLP, no bias.

    The hidden width is ``in_planes // 16`` (the official ``ratio`` argument is ignored there).
    """

    def __init__(self, in_planes: int):
        super().__init__()
        self.fc1 = nn.Conv2d(in_planes, in_planes // 16, 1, bias=False)
        self.fc2 = nn.Conv2d(in_planes // 16, in_planes, 1, bias=False)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._mlp(F.adaptive_avg_pool2d(x, 1)) + self._mlp(F.adaptive_max_pool2d(x, 1)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7x7([mean over C, max over C])), no bias."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm. The official class builds a ReLU but never applies it."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SDI(nn.Module):
    """Semantics and Detail Infusion: the product of the four 3x3-convolved levels at the anchor's size.

    A finer level is average-pooled to the anchor's (square) grid, a coarser one bilinearly
    upsampled (``align_corners=True``); level i always goes through ``convs[i]``.
    """

    def __init__(self, channel: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channel, channel, 3, padding=1) for _ in range(LEVELS))

    def forward(self, xs: Sequence[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
        size = anchor.shape[-1]
        fused = None
        for conv, x in zip(self.convs, xs):
            if x.shape[-1] > size:
                x = F.adaptive_avg_pool2d(x, (size, size))
            elif x.shape[-1] < size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
            y = conv(x)
            fused = y if fused is None else fused * y  # the official starts from ones_like(anchor)
        return fused


# --------------------------------------------------------------------------------------------
# Encoder (models/vmunet/vmamba.py: VSSM with its decoder commented out).
# --------------------------------------------------------------------------------------------


class VSSEncoder(nn.Module):
    """VMamba v0 encoder: ``patch_embed`` -> ``layers`` (VSS blocks, PatchMerging2D in stages 0..n-2).

    Keys ``patch_embed.*`` and ``layers.{i}.*`` exactly as VMamba-S v0 names them, so its ImageNet
    weights load by name. :meth:`forward` returns the INPUT of every stage (NHWC), as the
    official ``VSSM.forward`` of VM-UNetV2 does; the last stage's output would be discarded, so
    the last stage is not run.
    """

    def __init__(
        self,
        in_chans: int = 3,
        depths: Sequence[int] = PAPER_DEPTHS,
        embed_dim: int = 96,
        d_state: int = 16,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        depths = [int(d) for d in depths]
        self.depths = depths
        self.num_layers = len(depths)
        self.dims = [embed_dim * 2**i for i in range(self.num_layers)]
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed2D(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, norm_layer=nn.LayerNorm)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            VSSLayer(
                dim=dim,
                depth=depth,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                norm_layer=nn.LayerNorm,
                downsample=PatchMerging2D if i < self.num_layers - 1 else None,
                use_checkpoint=use_checkpoint,
                d_state=d_state,
            )
            for i, (dim, depth) in enumerate(zip(self.dims, depths))
        )
        self.apply(init_trunc_normal_)  # the official VSSM._init_weights: Linear and LayerNorm only

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x))
        stage_inputs = []
        for layer in self.layers[:-1]:
            stage_inputs.append(x)
            x = layer(x)
        stage_inputs.append(x)  # the last stage's input; the official discards its output
        return stage_inputs


# --------------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------------


class VMUNetV2(nn.Module):
    """VM-UNetV2: VMamba encoder -> per-level CBAM + 1x1 projection -> SDI fusion -> conv decoder.

    Defaults are the official training configuration (``configs/config_setting_v2.py``): encoder
    depths [2, 2, 9, 2] (96-768 channels), drop-path 0.2, mid_channel 48, deep supervision on for
    one class. Parameters: 22,770,934 (1 class), 22,771,130 (2), 22,772,502 (9; DS off).

    ``deep_supervision``: None follows the official configuration (on for one class, off
    otherwise); True with more than one class is a ``ConfigError`` (its fusion conv is 1 -> 1).
    The encoder width is ``2 * mid_channel`` (the official hard-codes 96 next to mid_channel 48).

    Input (B, C, H, W), square, sides multiples of 32 (native 256); C = ``in_chans``, or 1 when
    ``in_chans`` is 3 (repeated). Output: logits (B, num_classes, H, W), one tensor in training
    and evaluation alike.
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        mid_channel: int = 48,
        depths: Sequence[int] = PAPER_DEPTHS,
        drop_path_rate: float = 0.2,
        deep_supervision: bool | None = None,
        d_state: int = 16,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != LEVELS or any(int(d) < 1 for d in depths):
            raise ConfigError(f"model.overrides.depths: VM-UNetV2 has {LEVELS} encoder stages of >= 1 block, got {list(depths)}")
        if deep_supervision is None:
            deep_supervision = num_classes == 1
        if deep_supervision and num_classes != 1:
            raise ConfigError(
                f"model.overrides.deep_supervision: VM-UNetV2's deep-supervision fusion (deconv6) is a 1 -> 1 "
                f"transposed conv, so it works with one output class only, not {num_classes}; leave it unset or false"
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.deep_supervision = bool(deep_supervision)
        mid = mid_channel
        # Level i (1-based) carries the input of encoder stage i-1: 2*mid * 2**(i-1) channels.
        # Construction (and so registration and state_dict) order is the official __init__'s.
        for i in range(1, LEVELS + 1):
            setattr(self, f"ca_{i}", ChannelAttention(mid * 2**i))
            setattr(self, f"sa_{i}", SpatialAttention())
        for i in range(1, LEVELS + 1):
            setattr(self, f"Translayer_{i}", BasicConv2d(mid * 2**i, mid, 1))
        for i in range(1, LEVELS + 1):
            setattr(self, f"sdi_{i}", SDI(mid))
        self.seg_outs = nn.ModuleList(nn.Conv2d(mid, num_classes, 1) for _ in range(LEVELS))
        self.deconv2 = nn.ConvTranspose2d(mid, mid, kernel_size=4, stride=2, padding=1, bias=False)
        self.deconv3 = nn.ConvTranspose2d(mid, mid, kernel_size=4, stride=2, padding=1, bias=False)
        self.deconv4 = nn.ConvTranspose2d(mid, mid, kernel_size=4, stride=2, padding=1, bias=False)
        self.deconv5 = nn.ConvTranspose2d(mid, mid, kernel_size=4, stride=2, padding=1, bias=False)  # never used
        self.deconv6 = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
        self.vmunet = VSSEncoder(
            in_chans=in_chans,
            depths=depths,
            embed_dim=2 * mid,
            d_state=d_state,
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
        )
        self.size_multiple = self.vmunet.patch_size * 2 ** (LEVELS - 1)

    def _skip(self, level: int, f: torch.Tensor) -> torch.Tensor:
        """CBAM (channel, then spatial) and the 1x1 projection to ``mid_channel`` of one level."""
        f = getattr(self, f"ca_{level}")(f) * f
        f = getattr(self, f"sa_{level}")(f) * f
        return getattr(self, f"Translayer_{level}")(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(
            x, model="VM-UNetV2", in_chans=self.in_chans, multiple=self.size_multiple, square=True, gray_to_rgb=True
        )
        feats = [self._skip(i, f.permute(0, 3, 1, 2)) for i, f in enumerate(self.vmunet(x), start=1)]
        f1, f2, f3, f4 = (getattr(self, f"sdi_{i}")(feats, anchor) for i, anchor in enumerate(feats, start=1))
        # Decoder, coarsest first: y = deconv(y) + the next finer level. seg_outs.0/1 would read
        # f4 and the 1/16 level; the official computes them and throws them away.
        y = self.deconv2(f4) + f3
        y_eighth = self.deconv3(y) + f2
        y_quarter = self.deconv4(y_eighth) + f1
        out = F.interpolate(self.seg_outs[3](y_quarter), scale_factor=4, mode="bilinear")
        if self.deep_supervision:
            aux = F.interpolate(self.seg_outs[2](y_eighth), scale_factor=4, mode="bilinear")
            out = out + self.deconv6(aux)
        return out


# --------------------------------------------------------------------------------------------
# VMamba-S initialisation of the encoder (the official VMUNetV2.load_from).
# --------------------------------------------------------------------------------------------


@dataclass
class EncoderLoadReport:
    """What :func:`load_pretrained_vmamba_encoder` copied (the official ``load_from`` printout).

    ``model_keys`` / ``checkpoint_keys`` / ``len(loaded)`` are the official "Total model_dict",
    "Total pretrained_dict" and "update". Names are encoder names (no ``vmunet.`` prefix).
    """

    source: str
    checkpoint_keys: int
    model_keys: int
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # checkpoint names the encoder does not have
    shape_mismatches: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)  # encoder tensors left at their init

    def summary(self) -> str:
        text = (
            f"VMamba weights from {self.source} into the VM-UNetV2 encoder: model {self.model_keys}, "
            f"checkpoint {self.checkpoint_keys}, loaded {len(self.loaded)}, checkpoint tensors skipped "
            f"{len(self.skipped)}, encoder tensors left at init {len(self.not_loaded)}"
        )
        if self.shape_mismatches:
            text += f"; skipped for shape mismatch: {len(self.shape_mismatches)}: {self.shape_mismatches}"
        return text

    __str__ = summary  # what the engine logs


def load_pretrained_vmamba_encoder(
    model: nn.Module,
    path: str | PathLike[str] | Mapping[str, Any],
    map_location: Any = "cpu",
) -> EncoderLoadReport:
    """Initialise VM-UNetV2's encoder from VMamba-S v0 ImageNet weights, as the official ``load_from``.

    ``path``: a local checkpoint file (``vmamba_small_e238_ema.pth``), read with
    ``weights_only=True``; the state dict is its ``model`` entry or the file itself; an already
    loaded dict works too. Every checkpoint tensor whose name exists in the encoder
    (``patch_embed.*``, ``layers.i.blocks.j.*`` for j < depth_i, ``layers.{0,1,2}.downsample.*``)
    is copied; surplus blocks and the classifier (``norm.*``, ``head.*``) are skipped. Unlike the
    official code (whose strict load would then fail), a tensor of another shape is skipped and
    listed. Nothing outside the encoder is touched (the official decoder pass is commented out).
    ``model``: a :class:`VMUNetV2` or its ``.vmunet`` encoder.
    """
    encoder = inner_module(model, "vmunet", VSSEncoder, "VMUNetV2")
    state = state_dict_in(read_checkpoint(path, map_location), path, ("model",))
    own = encoder.state_dict()
    report = EncoderLoadReport(source=describe(path), checkpoint_keys=len(state), model_keys=len(own))
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in own:
            report.skipped.append(key)
        elif (mismatch := shape_mismatch(key, tensor, own[key])) is not None:
            report.shape_mismatches.append(mismatch)
        else:
            updates[key] = tensor
            report.loaded.append(key)
    encoder.load_state_dict(updates, strict=False)
    report.not_loaded = [k for k in own if k not in updates]
    log.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------------------------
# Registration.
# --------------------------------------------------------------------------------------------

_RECIPE: dict[str, Any] = {
    "source": f"{OFFICIAL} configs/config_setting_v2.py, train.py, engine.py",
    "optimizer": {"name": "AdamW", "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
    "scheduler": {"name": "CosineAnnealingLR", "T_max": 50, "eta_min": 1e-5, "step": "epoch"},
    "epochs": 300,
    "batch_size": 80,
    "input_size": (256, 256),
    "seed": 42,
    "amp": False,
    "loss": "BceDiceLoss(wb=1, wd=1) on the single fused output (sigmoid + BCE, soft Dice)",
    "drop_path_rate": 0.2,
    "deep_supervision": True,
    "pretrained": "VMamba-S v0 ImageNet-1K (vmamba_small_e238_ema.pth['model']) into the encoder by key name",
    "selection": "lowest val loss; ISIC val = the test split",
    "val_interval": 2,
}


@register_model(
    "vmunet-v2",
    family="vmunet-v2",
    paper=PAPER,
    mamba_parts=True,  # ablation twins: name~no-ssm, name~no-mamba
    input_size=(256, 256),
    description="VM-UNetV2: VMamba encoder [2,2,9,2] (96-768), CBAM + SDI skips, conv decoder; 22.77 M "
    "parameters (8.95 M unused, as the official); square inputs; returns logits",
    published=(),
    recipe=_RECIPE,
    load_pretrained=load_pretrained_vmamba_encoder,
)
def vmunet_v2(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> VMUNetV2:
    """Build VM-UNetV2 in the official training configuration; ``overrides`` go to :class:`VMUNetV2`."""
    return VMUNetV2(num_classes=num_classes, in_chans=in_chans, **overrides)
