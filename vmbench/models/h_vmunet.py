"""H-vmunet (Wu et al., arXiv 2403.13642; Neurocomputing 2025) as its official code builds it.

Source: wurenkai/H-vmunet@f255cb44, ``models/H_vmunet.py`` (the network) and ``models/vmamba.py``
(VMamba v0 ``SS2D``, the same code and keys as VM-UNet's, reused here from
:mod:`vmbench.models.vmunet`), configured by ``configs/config_setting.py`` for ISIC2017:
c_list [8, 16, 32, 64, 128, 256], split_att 'fc', bridge on, drop-path 0.4. The repository has
no licence file: this is an independent implementation of the same architecture, written from
its description. The selective scan is vmbench's (``vmbench.ops.selective_scan``: cuda /
triton / torch, chosen by its dispatch), not ``mamba_ssm``.

Architecture: a 6-level U-Net. Levels 1-2 are single 3x3 convs; levels 3-6 (and the decoder's
mirror stages) are two H-VSS blocks followed by a 3x3 conv. An H-VSS block is
``x + gamma1 * H-SS2D(LN(x))`` then a ConvNeXt-style MLP ``x + gamma2 * MLP(LN(x))``. H-SS2D of
order n (2, 3, 4, 5 from shallow to deep) is a HorNet-style recursive gated interaction whose
depth-wise mixer is Local-SS2D (half the channels through a 3x3 depth-wise conv, half through
SS2D, interleaved) and whose every order is followed by its own SS2D. Skips go through the
spatial + channel attention bridge (SC_Att_Bridge, as in MALUNet / UltraLight VM-UNet) and are
added to the decoder; GroupNorm(4) + GELU, max-pool down, bilinear (align_corners) up.

Faithful on purpose:

* ``state_dict`` keys, shapes and order as the official model: 8,972,623 parameters for one
  class. This includes the 16 Local-SS2D ``complex_weight`` tensors (403,392 parameters): the
  official code creates, initialises, saves and counts them but its forward never reads them
  (a leftover of HorNet's global filter), so they never get a gradient. They are kept so that
  official checkpoints load with ``strict=True``.
* The official init: Linear trunc-normal(0.02) with zero bias; Conv2d normal(0, sqrt(2/fan_out))
  with fan_out = k*k*out/groups and zero bias; Conv1d normal(0, sqrt(2/(k*out))); applied to every
  module, SS2D's projections and depth-wise conv included. Layer scale starts at 1e-6.
* Drop-path: linspace(0, 0.4, 8) over the encoder blocks; the decoder reuses the encoder rates
  of its level, except that both blocks of ``decoder1`` take rate 6 (the official indexing).

Differences, all deliberate:

* Logits are returned; the official returns ``sigmoid`` for every class count (and trains with
  ``nn.BCELoss``). vmbench's losses apply the sigmoid or softmax themselves.
* A 1-channel batch given to the 3-channel model is repeated to 3 channels, as vmbench's other
  models (and the VM-UNet wrapper) do, so the model runs on CT data (vmbench builds every model
  with 3 input channels); the official forward has no such repeat.
* Sides that are not multiples of 32 (five 2x max-pools) or another channel count raise
  ``ModelInputError`` instead of failing inside the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vmbench.errors import ConfigError
from vmbench.models.inputs import check_image_batch
from vmbench.models.layers import DropPath, trunc_normal_
from vmbench.models.vmunet import SS2D
from vmbench.registry import register_model

__all__ = [
    "HSS2D",
    "HVMUNet",
    "HVSSBlock",
    "LayerNorm2d",
    "LocalSS2D",
    "SCAttBridge",
    "h_vmunet",
]

PAPER = "H-vmunet: High-order Vision Mamba UNet for Medical Image Segmentation (Wu et al., arXiv 2403.13642)"
OFFICIAL = "wurenkai/H-vmunet@f255cb44"

PAPER_C_LIST = (8, 16, 32, 64, 128, 256)
DEPTH = 2  # H-VSS blocks per stage (the official depths [2, 2, 2, 2]; its rate indexing assumes 2)
# Per level 3..6: (interaction order, Local-SS2D complex_weight grid h x w). The grid only
# shapes the unused complex_weight; the mixer itself works at any size.
HSS2D_SETTINGS = ((2, (14, 8)), (3, (14, 8)), (4, (24, 13)), (5, (12, 7)))
HSS2D_SCALE = 1 / 3


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's ``channels_first`` LayerNorm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _ss2d_nchw(ss2d: SS2D, x: torch.Tensor) -> torch.Tensor:
    """Run the channels-last SS2D on an NCHW tensor."""
    return ss2d(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LocalSS2D(nn.Module):
    """Local-SS2D: LN -> [3x3 depth-wise conv on the first half | SS2D on the second half] -> interleave -> LN.

    The halves are interleaved channel by channel (output channel 2i from the conv, 2i+1 from
    SS2D). ``complex_weight`` (dim/2, h, w, 2) is created and initialised but never used.
    """

    def __init__(self, dim: int, h: int = 14, w: int = 8):
        super().__init__()
        half = dim // 2
        self.dw = nn.Conv2d(half, half, kernel_size=3, padding=1, bias=False, groups=half)
        self.complex_weight = nn.Parameter(torch.randn(half, h, w, 2) * 0.02)
        trunc_normal_(self.complex_weight, std=0.02)
        self.pre_norm = LayerNorm2d(dim)
        self.post_norm = LayerNorm2d(dim)
        self.SS2D = SS2D(d_model=half, d_state=16, dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.chunk(self.pre_norm(x), 2, dim=1)
        x = torch.stack([self.dw(x1), _ss2d_nchw(self.SS2D, x2)], dim=2).flatten(1, 2)
        return self.post_norm(x)


class HSS2D(nn.Module):
    """High-order 2-D selective scan (H-SS2D) of ``order`` n, HorNet's gnConv with SS2D mixers.

    Widths ``dims = [dim / 2^(n-1), ..., dim / 2, dim]``. ``proj_in`` (1x1, dim -> 2 dim) splits
    into p (dims[0]) and q (sum(dims)); q goes through Local-SS2D, times ``scale``, and is split
    by ``dims``. Then x = SS2D_in(p * q_0) and, for k = 1..n-1, x = SS2D_k(pws[k-1](x) * q_k);
    ``proj_out`` (1x1) closes. Keys ``ss2d_1 .. ss2d_{n-1}`` and ``ss2d_in`` as the official.
    """

    def __init__(self, dim: int, order: int = 5, h: int = 14, w: int = 8, scale: float = 1.0, d_state: int = 16):
        super().__init__()
        if not 2 <= order <= 5:
            raise ConfigError(f"H-SS2D order must be 2..5 (the official builds 2..5), got {order}")
        self.order = order
        self.dims = [dim // 2**i for i in range(order)][::-1]
        self.scale = scale
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = LocalSS2D(sum(self.dims), h=h, w=w)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1))
        for k in range(1, order):
            setattr(self, f"ss2d_{k}", SS2D(d_model=self.dims[k], d_state=d_state, dropout=0.0))
        self.ss2d_in = SS2D(d_model=self.dims[0], d_state=d_state, dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        gates = torch.split(self.dwconv(q) * self.scale, self.dims, dim=1)
        x = _ss2d_nchw(self.ss2d_in, p * gates[0])
        for k in range(1, self.order):
            x = _ss2d_nchw(getattr(self, f"ss2d_{k}"), self.pws[k - 1](x) * gates[k])
        return self.proj_out(x)


class HVSSBlock(nn.Module):
    """H-VSS block: x + DropPath(gamma1 * H-SS2D(LN(x))), then x + DropPath(gamma2 * MLP(LN(x))).

    The first LayerNorm is channels-first, the MLP's is channels-last; both eps 1e-6. The MLP is
    Linear(C, 4C) -> GELU -> Linear(4C, C). Official attribute ``H_SS2D`` keeps the keys.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6, hss2d: Callable[[int], nn.Module] = HSS2D):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.H_SS2D = hss2d(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.H_SS2D(self.norm1(x))
        if self.gamma1 is not None:
            y = self.gamma1.view(-1, 1, 1) * y
        x = x + self.drop_path(y)
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        if self.gamma2 is not None:
            y = self.gamma2 * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# Skip bridge (spatial then channel attention shared across the five skip levels).
# --------------------------------------------------------------------------------------------


class ChannelAttBridge(nn.Module):
    """Channel attention over all skips at once: GAP of each -> concat -> Conv1d(k=3) -> per-level fc -> sigmoid."""

    def __init__(self, c_list: Sequence[int], split_att: str = "fc"):
        super().__init__()
        total = sum(c_list) - c_list[-1]
        self.split_att = split_att
        self.get_all_att = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        for i, c in enumerate(c_list[:-1], start=1):
            setattr(self, f"att{i}", nn.Linear(total, c) if split_att == "fc" else nn.Conv1d(total, c, 1))

    def forward(self, ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        att = torch.cat([F.adaptive_avg_pool2d(t, 1) for t in ts], dim=1)  # (B, sum C, 1, 1)
        att = self.get_all_att(att.squeeze(-1).transpose(-1, -2))  # (B, 1, sum C)
        if self.split_att != "fc":
            att = att.transpose(-1, -2)  # (B, sum C, 1) for the 1x1 Conv1d
        out = []
        for i, t in enumerate(ts, start=1):
            a = torch.sigmoid(getattr(self, f"att{i}")(att))
            a = a.transpose(-1, -2) if self.split_att == "fc" else a  # (B, C_i, 1)
            out.append(a.unsqueeze(-1).expand_as(t))
        return out


class SpatialAttBridge(nn.Module):
    """One shared spatial attention for every skip: sigmoid(conv7x7 dilation 3 ([mean, max] over C))."""

    def __init__(self):
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, stride=1, padding=9, dilation=3), nn.Sigmoid())

    def forward(self, ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.shared_conv2d(torch.cat([t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)], dim=1)) for t in ts]


class SCAttBridge(nn.Module):
    """SC_Att_Bridge: s = SA(t)*t; u = s + t; returns CA(u)*u + s for each skip level."""

    def __init__(self, c_list: Sequence[int], split_att: str = "fc"):
        super().__init__()
        self.catt = ChannelAttBridge(c_list, split_att=split_att)
        self.satt = SpatialAttBridge()

    def forward(self, ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        spatial = [a * t for a, t in zip(self.satt(ts), ts)]
        summed = [s + t for s, t in zip(spatial, ts)]
        return [a * u + s for a, u, s in zip(self.catt(summed), summed, spatial)]


# --------------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------------


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=1, padding=1)


class HVMUNet(nn.Module):
    """H-vmunet: 6-level U-Net of H-VSS blocks with an SC attention bridge on the skips.

    Defaults are the official ISIC2017 configuration (``configs/config_setting.py``): c_list
    [8, 16, 32, 64, 128, 256], split_att 'fc', bridge on, drop_path_rate 0.4. Parameters:
    8,972,623 (1 class), 8,972,632 (2), 8,972,695 (9).

    Input (B, in_chans, H, W), or 1 channel repeated when ``in_chans`` is 3; sides multiples of
    32 (native 256; H != W works). Output: logits (B, num_classes, H, W).
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        c_list: Sequence[int] = PAPER_C_LIST,
        drop_path_rate: float = 0.4,
        layer_scale_init_value: float = 1e-6,
        split_att: str = "fc",
        bridge: bool = True,
    ):
        super().__init__()
        c = [int(v) for v in c_list]
        if len(c) != 6 or any(v <= 0 or v % 4 for v in c):
            raise ConfigError(f"model.overrides.c_list: H-vmunet needs six widths divisible by 4 (GroupNorm(4)), got {c}")
        if split_att not in ("fc", "conv"):
            raise ConfigError(f"model.overrides.split_att must be 'fc' or 'conv', got {split_att!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.bridge = bridge
        rates = torch.linspace(0, drop_path_rate, 4 * DEPTH, device="cpu").tolist()

        def stage(level: int, c_in: int, c_out: int, rate_of: Callable[[int], float]) -> nn.Sequential:
            order, (h, w) = HSS2D_SETTINGS[level]

            def hss2d(dim: int) -> HSS2D:
                return HSS2D(dim, order=order, h=h, w=w, scale=HSS2D_SCALE)

            blocks = [HVSSBlock(c_in, rate_of(j), layer_scale_init_value, hss2d) for j in range(DEPTH)]
            return nn.Sequential(*blocks, _conv3x3(c_in, c_out))

        # Same construction (and registration) order as the official __init__.
        self.encoder1 = nn.Sequential(_conv3x3(in_chans, c[0]))
        self.encoder2 = nn.Sequential(_conv3x3(c[0], c[1]))
        self.encoder3 = stage(0, c[1], c[2], lambda j: rates[0 + j])
        self.encoder4 = stage(1, c[2], c[3], lambda j: rates[2 + j])
        self.encoder5 = stage(2, c[3], c[4], lambda j: rates[4 + j])
        self.encoder6 = stage(3, c[4], c[5], lambda j: rates[6 + j])
        if bridge:
            self.scab = SCAttBridge(c, split_att)
        self.decoder1 = stage(3, c[5], c[4], lambda j: rates[6])  # both blocks rate 6, as the official
        self.decoder2 = stage(2, c[4], c[3], lambda j: rates[4 + j])
        self.decoder3 = stage(1, c[3], c[2], lambda j: rates[2 + j])
        self.decoder4 = stage(0, c[2], c[1], lambda j: rates[0 + j])
        self.decoder5 = nn.Sequential(_conv3x3(c[1], c[0]))
        for i in range(5):
            setattr(self, f"ebn{i + 1}", nn.GroupNorm(4, c[i]))
        for i in range(5):
            setattr(self, f"dbn{i + 1}", nn.GroupNorm(4, c[4 - i]))
        self.final = nn.Conv2d(c[0], num_classes, kernel_size=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv1d):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.out_channels)))
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(2, 2), mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(x, model="H-vmunet", in_chans=self.in_chans, multiple=32, gray_to_rgb=True)
        skips = []
        out = x
        for i in range(1, 6):
            out = F.gelu(F.max_pool2d(getattr(self, f"ebn{i}")(getattr(self, f"encoder{i}")(out)), 2, 2))
            skips.append(out)  # t1 .. t5 at 1/2 .. 1/32
        if self.bridge:
            skips = self.scab(skips)
        out = F.gelu(self.encoder6(out))
        out = F.gelu(self.dbn1(self.decoder1(out))) + skips[4]
        for i in range(2, 6):  # decoder i: conv stage, GroupNorm, 2x up, GELU, + skip t_{6-i}
            out = F.gelu(self._up(getattr(self, f"dbn{i}")(getattr(self, f"decoder{i}")(out)))) + skips[5 - i]
        return self._up(self.final(out))


# --------------------------------------------------------------------------------------------
# Registration.
# --------------------------------------------------------------------------------------------

_RECIPE: dict[str, Any] = {
    "source": f"{OFFICIAL} configs/config_setting.py (ISIC2017), train.py, engine.py, dataprepare/Prepare_ISIC2017.py",
    "optimizer": {"name": "AdamW", "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
    "scheduler": {"name": "CosineAnnealingLR", "T_max": 50, "eta_min": 1e-5, "step": "epoch"},
    "epochs": 250,
    "batch_size": 8,
    "input_size": (256, 256),
    "seed": 42,
    "amp": False,
    "loss": "BceDiceLoss(wb=1, wd=1): BCE on sigmoid + soft Dice",
    "drop_path_rate": 0.4,
    "pretrained": None,
    "split": "ISIC2017 training set only: first 1250 train, next 150 val, last 600 test (glob order)",
    "selection": "lowest val loss (the 150-image val split); test once on the 600 with best.pth",
    "val_interval": 30,
}


@register_model(
    "h-vmunet",
    family="h-vmunet",
    paper=PAPER,
    mamba_parts=True,  # ablation twins: name~no-ssm, name~no-mamba
    input_size=(256, 256),
    description="H-vmunet: 6-level U-Net of high-order SS2D (H-VSS) blocks, c_list 8-256, SC attention "
    "bridge; 8.97 M parameters (0.40 M unused complex_weight, as the official); returns logits",
    published=(),
    recipe=_RECIPE,
)
def h_vmunet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> HVMUNet:
    """Build H-vmunet in the official ISIC2017 configuration; ``overrides`` go to :class:`HVMUNet`."""
    return HVMUNet(num_classes=num_classes, in_chans=in_chans, **overrides)
