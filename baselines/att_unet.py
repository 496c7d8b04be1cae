"""Attention U-Net as LeeJunHyun/Image_Segmentation ``AttU_Net`` builds it (``network.py`` @5e9da93).

The encoder, ``up_conv`` and ``conv_block`` are those of LeeJunHyun's ``U_Net``
(:class:`baselines.unet.UNetClassic`); before each concat the skip ``x`` is gated by an
:class:`AttentionBlock` whose gating signal ``g`` is the **upsampled decoder feature at the skip's
resolution**::

    psi = sigmoid(BN(conv1x1(relu(BN(W_g g) + BN(W_x x)))))      # (B, 1, H, W)
    out = x * psi

with ``Att5(512, 512, 256)``, ``Att4(256, 256, 128)``, ``Att3(128, 128, 64)``, ``Att2(64, 64, 32)``.
All 1x1 convs have biases. 34,878,573 parameters (3 -> 1), 34,879,093 (3 -> 9). Keys match the
reference (``Att5.W_g.{0,1}.*``, ``Att5.W_x.{0,1}.*``, ``Att5.psi.{0,1}.*`` plus the ``U_Net``
keys), so its checkpoints load with ``strict=True``.

This is **not** Oktay et al.'s official gate (``ozan-oktay/Attention-Gated-Networks``): that one is
3-D only, downsamples ``x`` to the gate resolution with a strided, bias-free theta conv, takes
``g`` from the coarser level, upsamples the attention map and applies an output transform
(1x1 conv + BN), with deep supervision (``models/layers/grid_attention_layer.py``,
``models/networks/unet_CT_multi_att_dsv_3D.py`` @eee4881). 2-D Att-UNet results in
practice use the LeeJunHyun gate.

Returns logits. Input rules as :mod:`baselines.unet`: H and W positive multiples of 16, and a
1-channel image is repeated to 3 channels for a 3-channel model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.unet import ConvBlock, UpConv, _check_widths, _recipe, prepare_input
from vmbench.errors import ModelInputError
from vmbench.registry import PublishedResult, register_model

__all__ = ["AttentionBlock", "AttUNet"]


class AttentionBlock(nn.Module):
    """LeeJunHyun ``Attention_block(F_g, F_l, F_int)``: additive gate at the skip's resolution.

    ``W_g`` = 1x1 conv (F_g -> F_int, bias) + BN; ``W_x`` = 1x1 conv (F_l -> F_int, bias) + BN;
    ``psi`` = 1x1 conv (F_int -> 1, bias) + BN(1) + sigmoid. ``forward(g, x)`` returns
    ``x * psi(relu(W_g(g) + W_x(x)))``; ``g`` and ``x`` must have the same spatial size.
    """

    def __init__(self, F_g: int, F_l: int, F_int: int):  # noqa: N803 (reference argument names)
        super().__init__()
        self.W_g = nn.Sequential(
            nn.Conv2d(F_g, F_int, kernel_size=1, stride=1, padding=0, bias=True),
            nn.BatchNorm2d(F_int),
        )
        self.W_x = nn.Sequential(
            nn.Conv2d(F_l, F_int, kernel_size=1, stride=1, padding=0, bias=True),
            nn.BatchNorm2d(F_int),
        )
        self.psi = nn.Sequential(
            nn.Conv2d(F_int, 1, kernel_size=1, stride=1, padding=0, bias=True),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.relu = nn.ReLU(inplace=True)

    def attention(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1, H, W) attention coefficients in [0, 1]."""
        if g.shape[-2:] != x.shape[-2:]:
            raise ModelInputError(
                f"AttentionBlock needs g and x at the same resolution, got {tuple(g.shape[-2:])} "
                f"and {tuple(x.shape[-2:])}"
            )
        return self.psi(self.relu(self.W_g(g) + self.W_x(x)))

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(g, x)


class AttUNet(nn.Module):
    """LeeJunHyun ``AttU_Net``: ``U_Net`` with an :class:`AttentionBlock` on every skip; logits out."""

    def __init__(self, num_classes: int = 1, in_chans: int = 3, base_channels: int = 64):
        super().__init__()
        _check_widths(num_classes, in_chans, base_channels)
        self.num_classes = num_classes
        self.in_chans = in_chans
        c = [base_channels * 2**i for i in range(5)]
        self.Maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.Conv1 = ConvBlock(in_chans, c[0])
        self.Conv2 = ConvBlock(c[0], c[1])
        self.Conv3 = ConvBlock(c[1], c[2])
        self.Conv4 = ConvBlock(c[2], c[3])
        self.Conv5 = ConvBlock(c[3], c[4])
        self.Up5 = UpConv(c[4], c[3])
        self.Att5 = AttentionBlock(F_g=c[3], F_l=c[3], F_int=c[2])
        self.Up_conv5 = ConvBlock(c[4], c[3])
        self.Up4 = UpConv(c[3], c[2])
        self.Att4 = AttentionBlock(F_g=c[2], F_l=c[2], F_int=c[1])
        self.Up_conv4 = ConvBlock(c[3], c[2])
        self.Up3 = UpConv(c[2], c[1])
        self.Att3 = AttentionBlock(F_g=c[1], F_l=c[1], F_int=c[0])
        self.Up_conv3 = ConvBlock(c[2], c[1])
        self.Up2 = UpConv(c[1], c[0])
        self.Att2 = AttentionBlock(F_g=c[0], F_l=c[0], F_int=c[0] // 2)
        self.Up_conv2 = ConvBlock(c[1], c[0])
        self.Conv_1x1 = nn.Conv2d(c[0], num_classes, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes, H, W) logits."""
        x = prepare_input(x, self.in_chans, type(self).__name__)
        x1 = self.Conv1(x)
        x2 = self.Conv2(self.Maxpool(x1))
        x3 = self.Conv3(self.Maxpool(x2))
        x4 = self.Conv4(self.Maxpool(x3))
        x5 = self.Conv5(self.Maxpool(x4))

        d = self.Up5(x5)
        d = self.Up_conv5(torch.cat((self.Att5(g=d, x=x4), d), dim=1))
        d = self.Up4(d)
        d = self.Up_conv4(torch.cat((self.Att4(g=d, x=x3), d), dim=1))
        d = self.Up3(d)
        d = self.Up_conv3(torch.cat((self.Att3(g=d, x=x2), d), dim=1))
        d = self.Up2(d)
        d = self.Up_conv2(torch.cat((self.Att2(g=d, x=x1), d), dim=1))
        return self.Conv_1x1(d)


# --------------------------------------------------------------------------------------------
# Registration: published rows (VM-UNet Table I for ISIC2018; Swin-UNet Table 1 for Synapse).
# --------------------------------------------------------------------------------------------

PAPER_ATT_UNET = (
    "Attention U-Net: Learning Where to Look for the Pancreas (Oktay et al., MIDL 2018, "
    "arXiv 1804.03999); implementation LeeJunHyun/Image_Segmentation AttU_Net (network.py @5e9da93)"
)

ATT_UNET_PUBLISHED = (
    # No ISIC17 Att-UNet row is believed to exist in VM-UNet Table I (unverified).
    PublishedResult(
        dataset="isic2018",
        metrics={"miou": 78.43, "dsc": 87.91, "acc": 94.13, "spe": 96.23, "sen": 87.60},
        source=(
            "VM-UNet paper Table I (unverified; check against the PDF); implementation, seed and "
            "split unpublished"
        ),
    ),
    PublishedResult(
        dataset="synapse",
        # DSC in %, HD95 in voxels; per-organ DSC in the paper's column order.
        metrics={
            "dsc": 77.77,
            "hd95": 36.02,
            "dsc_aorta": 89.55,
            "dsc_gallbladder": 68.88,
            "dsc_kidney_l": 77.98,
            "dsc_kidney_r": 71.11,
            "dsc_liver": 93.57,
            "dsc_pancreas": 58.04,
            "dsc_spleen": 87.30,
            "dsc_stomach": 75.75,
        },
        source=(
            "Swin-UNet paper Table 1 (transcribed); which Att-UNet implementation produced it is "
            "unpublished"
        ),
    ),
)

ATT_UNET_RECIPE = {
    **_recipe("the recipe behind the published Att-UNet rows is unpublished, so every value here is assumed"),
    # Oktay's official 3-D recipe (configs/config_unet_ct_multi_att_dsv.json @eee4881), for
    # reference only; not used for 2-D.
    "reference_training": {
        "optimizer": {"name": "Adam", "lr": 1e-4, "weight_decay": 1e-6},
        "loss": "Dice",
        "batch_size": 2,
        "note": "ozan-oktay/Attention-Gated-Networks 3-D CT config; LeeJunHyun's solver as for U_Net",
    },
}

@register_model(
    "att-unet",
    family="att-unet",
    paper=PAPER_ATT_UNET,
    input_size=(256, 256),
    description=(
        "Attention U-Net, LeeJunHyun AttU_Net (additive gates at the skip's resolution, widths "
        "64-1024); 34,878,573 params; differs from Oktay's official 3-D gate; returns logits"
    ),
    published=ATT_UNET_PUBLISHED,
    recipe=ATT_UNET_RECIPE,
)
def att_unet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> AttUNet:
    """Build LeeJunHyun's ``AttU_Net``; ``overrides``: ``base_channels`` (64)."""
    return AttUNet(num_classes=num_classes, in_chans=in_chans, **overrides)
