"""UltraLight VM-UNet (Wu et al., Patterns 2025, arXiv 2403.20035) as the official code builds it.

Official code: wurenkai/UltraLight-VM-UNet, commit d7648e4e, ``models/UltraLight_VM_UNet.py``;
configuration from ``configs/config_setting.py`` (c_list [8, 16, 24, 32, 48, 64], split_att 'fc',
bridge True): 49,457 parameters for 3 input channels and 1 class. Module tree, parameter names
and shapes, initialisation and forward follow that file, so its checkpoints load with
``strict=True``:

* Three conv stages, then three PVM layers (Parallel Vision Mamba: LayerNorm, the channels split
  into 4 chunks that all go through ONE shared :class:`~vmbench.models.mamba.Mamba` with a scaled
  skip, the same LayerNorm again, a Linear to the output width); each encoder stage is followed by
  GroupNorm(4), 2x max-pool and GELU.
* The SC-Att bridge (spatial attention shared by the five skips, then channel attention from
  their pooled concatenation) refines the skips t1..t5.
* The decoder mirrors it with bilinear (align_corners=True) 2x upsampling and additive skips.
* Init (``_init_weights`` applied to every module): Linear trunc-normal(0.02) with zero bias,
  Conv1d normal(0, sqrt(2 / (k * out))), Conv2d normal(0, sqrt(2 / fan_out)) with zero bias.
  This also re-initialises each Mamba's ``dt_proj`` (weight trunc-normal(0.02), bias 0), undoing
  Mamba's own dt init; ``official_init=True`` (the default) keeps that quirk, False leaves
  ``dt_proj`` as Mamba initialised it.

Differences from the official code, on purpose:

* The model returns logits; the official forward ends in ``torch.sigmoid`` (and trains with
  ``BceDiceLoss`` on probabilities). vmbench's losses apply the sigmoid themselves.
* The four chunks of a PVM layer go through the shared Mamba as one batch of 4x the size: the
  same function and gradients as four calls, with a quarter of the kernel launches.
* Sides that are not multiples of 32 (five 2x max-pools) or a wrong channel count raise
  ``ModelInputError``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmbench.models.inputs import check_image_batch
from vmbench.models.layers import trunc_normal_
from vmbench.models.mamba import Mamba
from vmbench.registry import register_model

__all__ = ["PVMLayer", "SCAttBridge", "UltraLightVMUNet", "ultralight_vmunet"]

PAPER = (
    "UltraLight VM-UNet: Parallel Vision Mamba Significantly Reduces Parameters for Skin Lesion "
    "Segmentation (Wu, Liu, Ning, Liang & Chang, Patterns 2025; arXiv 2403.20035)"
)
C_LIST = (8, 16, 24, 32, 48, 64)


class PVMLayer(nn.Module):
    """Parallel Vision Mamba layer: (B, C, *spatial) -> (B, output_dim, *spatial).

    Tokens are the spatial positions; the normalised channels are split into 4 chunks of C/4 that
    share one Mamba (d_model C/4), each with the skip ``skip_scale * chunk``; the concatenation is
    normalised again with the same LayerNorm and projected.
    """

    def __init__(
        self, input_dim: int, output_dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, **mamba_kw
    ):
        super().__init__()
        if input_dim % 4:
            raise ValueError(f"PVMLayer: input_dim {input_dim} must be divisible by 4 (four parallel chunks)")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mamba = Mamba(d_model=input_dim // 4, d_state=d_state, d_conv=d_conv, expand=expand, **mamba_kw)
        self.proj = nn.Linear(input_dim, output_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:  # as the official layer: the Mamba runs in fp32 under fp16
            x = x.float()
        batch, channels = x.shape[:2]
        spatial = x.shape[2:]
        tokens = x.reshape(batch, channels, -1).transpose(-1, -2)  # (B, L, C)
        normed = self.norm(tokens)
        chunks = torch.cat(normed.chunk(4, dim=2), dim=0)  # (4B, L, C/4): the shared Mamba's batch
        mixed = self.mamba(chunks) + self.skip_scale * chunks
        mixed = torch.cat(mixed.chunk(4, dim=0), dim=2)
        out = self.proj(self.norm(mixed))
        return out.transpose(-1, -2).reshape(batch, self.output_dim, *spatial)


class ChannelAttBridge(nn.Module):
    """Channel attention from the pooled skips: a 3-tap Conv1d across all their channels, then one
    Linear ('fc') or 1x1 Conv1d ('conv') + sigmoid per skip."""

    def __init__(self, c_list: Sequence[int], split_att: str = "fc"):
        super().__init__()
        if split_att not in ("fc", "conv"):
            raise ValueError(f"split_att must be 'fc' or 'conv', got {split_att!r}")
        total = sum(c_list) - c_list[-1]
        self.split_att = split_att
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.get_all_att = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        for i, c in enumerate(c_list[:5], start=1):
            setattr(self, f"att{i}", nn.Linear(total, c) if split_att == "fc" else nn.Conv1d(total, c, 1))
        self.sigmoid = nn.Sigmoid()

    def forward(self, *skips: torch.Tensor) -> list[torch.Tensor]:
        att = torch.cat([self.avgpool(t) for t in skips], dim=1)  # (B, sum C, 1, 1)
        att = self.get_all_att(att.squeeze(-1).transpose(-1, -2))  # (B, 1, sum C)
        if self.split_att != "fc":
            att = att.transpose(-1, -2)  # (B, sum C, 1) for the 1x1 convs
        out = []
        for i, t in enumerate(skips, start=1):
            a = self.sigmoid(getattr(self, f"att{i}")(att))
            a = a.transpose(-1, -2) if self.split_att == "fc" else a  # (B, C_i, 1)
            out.append(a.unsqueeze(-1).expand_as(t))
        return out


class SpatialAttBridge(nn.Module):
    """One dilated 7x7 conv (on channel mean and max) + sigmoid, shared by every skip."""

    def __init__(self):
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, stride=1, padding=9, dilation=3), nn.Sigmoid())

    def forward(self, *skips: torch.Tensor) -> list[torch.Tensor]:
        return [
            self.shared_conv2d(torch.cat([t.mean(dim=1, keepdim=True), t.max(dim=1, keepdim=True)[0]], dim=1))
            for t in skips
        ]


class SCAttBridge(nn.Module):
    """Spatial then channel attention over the five skips, with the official's two residuals."""

    def __init__(self, c_list: Sequence[int], split_att: str = "fc"):
        super().__init__()
        self.catt = ChannelAttBridge(c_list, split_att=split_att)
        self.satt = SpatialAttBridge()

    def forward(self, *skips: torch.Tensor) -> list[torch.Tensor]:
        spatial = [a * t for a, t in zip(self.satt(*skips), skips)]
        summed = [s + t for s, t in zip(spatial, skips)]
        return [a * u + s for a, u, s in zip(self.catt(*summed), summed, spatial)]


class UltraLightVMUNet(nn.Module):
    """UltraLight VM-UNet: (B, in_chans, H, W) -> (B, num_classes, H, W) logits; H, W multiples of 32.

    Arguments mirror the official ``UltraLight_VM_UNet(num_classes, input_channels, c_list,
    split_att, bridge)``; ``scan_backend`` / ``conv_backend`` go to every Mamba block;
    ``official_init`` is described in the module docstring.
    """

    size_multiple = 32

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        c_list: Sequence[int] = C_LIST,
        split_att: str = "fc",
        bridge: bool = True,
        official_init: bool = True,
        scan_backend: str | None = None,
        conv_backend: str | None = None,
    ):
        super().__init__()
        c = list(c_list)
        if len(c) != 6:
            raise ValueError(f"c_list must have 6 widths, got {c}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.bridge = bridge
        mkw = {"scan_backend": scan_backend, "conv_backend": conv_backend}

        def conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=1, padding=1))

        # Created in the official order (one seed gives the official weights).
        self.encoder1 = conv(in_chans, c[0])
        self.encoder2 = conv(c[0], c[1])
        self.encoder3 = conv(c[1], c[2])
        self.encoder4 = nn.Sequential(PVMLayer(c[2], c[3], **mkw))
        self.encoder5 = nn.Sequential(PVMLayer(c[3], c[4], **mkw))
        self.encoder6 = nn.Sequential(PVMLayer(c[4], c[5], **mkw))
        if bridge:
            self.scab = SCAttBridge(c, split_att)
        self.decoder1 = nn.Sequential(PVMLayer(c[5], c[4], **mkw))
        self.decoder2 = nn.Sequential(PVMLayer(c[4], c[3], **mkw))
        self.decoder3 = nn.Sequential(PVMLayer(c[3], c[2], **mkw))
        self.decoder4 = conv(c[2], c[1])
        self.decoder5 = conv(c[1], c[0])
        for i, width in enumerate(c[:5], start=1):
            setattr(self, f"ebn{i}", nn.GroupNorm(4, width))
        for i, width in enumerate(reversed(c[:5]), start=1):
            setattr(self, f"dbn{i}", nn.GroupNorm(4, width))
        self.final = nn.Conv2d(c[0], num_classes, kernel_size=1)

        self.apply(self._init_weights if official_init else self._init_weights_keeping_dt)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The official ``_init_weights`` (Mamba's dt_proj included)."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Conv1d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.out_channels)))
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()

    @classmethod
    def _init_weights_keeping_dt(cls, m: nn.Module) -> None:
        """The official init everywhere except Mamba's dt_proj (its bias is marked ``_no_reinit``)."""
        if isinstance(m, nn.Linear) and getattr(m.bias, "_no_reinit", False):
            return
        cls._init_weights(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(x, model="UltraLight VM-UNet", in_chans=self.in_chans, multiple=self.size_multiple)
        skips = []
        out = x
        for i in range(1, 6):
            out = F.gelu(F.max_pool2d(getattr(self, f"ebn{i}")(getattr(self, f"encoder{i}")(out)), 2, 2))
            skips.append(out)  # t1 .. t5 at 1/2 .. 1/32
        if self.bridge:
            skips = self.scab(*skips)
        t1, t2, t3, t4, t5 = skips
        out = F.gelu(self.encoder6(out))
        out = F.gelu(self.dbn1(self.decoder1(out))) + t5
        out = F.gelu(_up(self.dbn2(self.decoder2(out)))) + t4
        out = F.gelu(_up(self.dbn3(self.decoder3(out)))) + t3
        out = F.gelu(_up(self.dbn4(self.decoder4(out)))) + t2
        out = F.gelu(_up(self.dbn5(self.decoder5(out)))) + t1
        return _up(self.final(out))  # logits; the official returns torch.sigmoid of this


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=(2, 2), mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------------------------
# Registration. The published ISIC numbers are not listed: the paper's tables could not be read
# here to verify them (the official README's PVM table gives DSC 0.9091 without naming the data set).
# --------------------------------------------------------------------------------------------

_RECIPE: dict[str, Any] = {
    "source": "wurenkai/UltraLight-VM-UNet@d7648e4e configs/config_setting.py, train.py, engine.py",
    "optimizer": {
        "name": "AdamW", "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False
    },
    "scheduler": {"name": "CosineAnnealingLR", "T_max": 50, "eta_min": 1e-5, "step": "epoch"},
    "epochs": 250,
    "batch_size": 8,
    "seed": 42,
    "amp": False,
    "input_size": (256, 256),
    "loss": "BceDiceLoss(wb=1, wd=1): BCE on sigmoid + soft Dice",
    "selection": "lowest validation loss; tested once on a separate test split",
    "split": "ISIC2017: the 2000 training images, 1250 train / 150 val / 600 test in file order "
    "(dataprepare/Prepare_ISIC2017.py)",
    "threshold": 0.5,
}


@register_model(
    "ultralight-vmunet",
    family="ultralight-vmunet",
    paper=PAPER,
    mamba_parts=True,  # ablation twins: name~no-ssm, name~no-mamba
    input_size=(256, 256),
    description="UltraLight VM-UNet, official configuration: c_list [8,16,24,32,48,64], SC-Att bridge, "
    "one Mamba shared by 4 channel chunks per PVM layer; 49,457 parameters; returns logits",
    recipe=_RECIPE,
)
def ultralight_vmunet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> UltraLightVMUNet:
    """Build UltraLight VM-UNet in the official configuration; ``overrides`` go to :class:`UltraLightVMUNet`."""
    return UltraLightVMUNet(num_classes=num_classes, in_chans=in_chans, **overrides)
