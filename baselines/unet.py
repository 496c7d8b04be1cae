"""UNet baselines: the width-32 UNet of the ISIC tables and LeeJunHyun's ``U_Net``.

Two models are registered:

``unet``
    The 4-level UNet behind the "UNet (7.77M)" rows of the MALUNet / EGE-UNet / VM-UNet ISIC
    tables. Its code was never published (neither MALUNet's ``models/malunet.py`` nor VM-UNet's
    ``models/vmunet/`` ships it; the VM-UNet author calls it "about 7M", JCruan519/VM-UNet issue
    #22). The matching rebuild is the milesial/Pytorch-UNet layout at width 32
    (32-64-128-256-512): ``DoubleConv`` = (3x3 conv -> BN -> ReLU) x 2, max-pool down,
    ``ConvTranspose2d(2x2, stride 2)`` up (``bilinear=False``), concat ``[skip, up]``, 1x1 head. 7,765,985 parameters with conv biases (3 -> 1),
    7,766,249 for 9 classes, 7,763,041 with ``conv_bias=False`` (the later milesial code).
    ``state_dict`` keys follow milesial: ``inc.double_conv.{0,1,3,4}.*``,
    ``down{1..4}.maxpool_conv.1.double_conv.*``, ``up{1..4}.up.*``, ``up{1..4}.conv.double_conv.*``,
    ``outc.conv.*``.

``unet-classic``
    LeeJunHyun/Image_Segmentation ``U_Net`` (``network.py``): widths 64..1024, conv blocks
    with biased 3x3 convs + BN + ReLU, decoder upsampling = nearest x2 -> 3x3 conv -> BN ->
    ReLU, concat ``(skip, up)``. 34,527,041 parameters (3 -> 1), 34,527,561 (3 -> 9). Keys as
    the reference: ``Conv1.conv.{0,1,3,4}.*``, ``Up5.up.{1,2}.*``, ``Up_conv5.conv.*``, ...,
    ``Conv_1x1.{weight,bias}``, so its checkpoints load with ``strict=True``.

Both return **logits** (no sigmoid/softmax; LeeJunHyun's solver applies the sigmoid outside the
network too). Input: (B, C, H, W) with H and W positive multiples of 16 (four 2x poolings; H != W
is fine). A model built for 3 channels also accepts a 1-channel image and repeats it to 3
channels, as VM-UNet does for Synapse CT slices; any other channel count or size is a
:class:`vmbench.errors.ModelInputError` (a ``ValueError``).
milesial's ``Up`` pads the upsampled map when a side is odd; with sides divisible by 16 that pad
is always zero, so it is omitted here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vmbench.errors import ModelInputError
from vmbench.models.layers import check_image_channels
from vmbench.registry import PublishedResult, register_model

__all__ = [
    "DoubleConv",
    "Down",
    "Up",
    "OutConv",
    "UNet",
    "ConvBlock",
    "UpConv",
    "UNetClassic",
    "prepare_input",
    "DIVISOR",
]

#: Input sides must be multiples of this (four 2x max-pools).
DIVISOR = 16


def prepare_input(x: torch.Tensor, in_chans: int, model_name: str) -> torch.Tensor:
    """Check a (B, C, H, W) input and repeat a 1-channel image to 3 channels when needed.

    Raises :class:`ModelInputError` for a non-4-D tensor, a wrong channel count, or sides that
    are not positive multiples of 16.
    """
    x = check_image_channels(x, in_chans, model_name)
    height, width = x.shape[2], x.shape[3]
    if height <= 0 or width <= 0 or height % DIVISOR or width % DIVISOR:
        raise ModelInputError(
            f"{model_name} needs height and width divisible by {DIVISOR} (four 2x poolings), "
            f"got {height}x{width}; resize or pad the input, e.g. to "
            f"{max(DIVISOR, -(-height // DIVISOR) * DIVISOR)}x{max(DIVISOR, -(-width // DIVISOR) * DIVISOR)}"
        )
    return x


def _check_widths(num_classes: int, in_chans: int, base_channels: int) -> None:
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans), ("base_channels", base_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# ISIC-table UNet (milesial/Pytorch-UNet layout, width 32, transposed-conv upsampling).
# --------------------------------------------------------------------------------------------


class DoubleConv(nn.Module):
    """(3x3 conv, padding 1 -> BN -> ReLU) twice; parameters live in ``double_conv.{0,1,3,4}``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool then :class:`DoubleConv` (``maxpool_conv.0`` pool, ``maxpool_conv.1`` convs)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """2x2 stride-2 transposed conv halving the channels, concat ``[skip, up]``, :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels, bias=bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class OutConv(nn.Module):
    """1x1 conv head with bias (``conv.*``); no activation."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """The width-32, 4-level, transposed-conv UNet of the ISIC tables ("7.77M" in MALUNet/VM-UNet Table I).

    ``base_channels`` sets the first width (32; 64 gives milesial's 31.04 M UNet);
    ``conv_bias=False`` drops the 3x3 conv biases as later milesial code does (7,763,041
    parameters). The transposed convs and the head always have biases. Returns logits.
    """

    def __init__(self, num_classes: int = 1, in_chans: int = 3, base_channels: int = 32, conv_bias: bool = True):
        super().__init__()
        _check_widths(num_classes, in_chans, base_channels)
        self.num_classes = num_classes
        self.in_chans = in_chans
        c = [base_channels * 2**i for i in range(5)]
        self.inc = DoubleConv(in_chans, c[0], bias=conv_bias)
        self.down1 = Down(c[0], c[1], bias=conv_bias)
        self.down2 = Down(c[1], c[2], bias=conv_bias)
        self.down3 = Down(c[2], c[3], bias=conv_bias)
        self.down4 = Down(c[3], c[4], bias=conv_bias)
        self.up1 = Up(c[4], c[3], bias=conv_bias)
        self.up2 = Up(c[3], c[2], bias=conv_bias)
        self.up3 = Up(c[2], c[1], bias=conv_bias)
        self.up4 = Up(c[1], c[0], bias=conv_bias)
        self.outc = OutConv(c[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes, H, W) logits."""
        x = prepare_input(x, self.in_chans, type(self).__name__)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        d = self.up1(x5, x4)
        d = self.up2(d, x3)
        d = self.up3(d, x2)
        d = self.up4(d, x1)
        return self.outc(d)


# --------------------------------------------------------------------------------------------
# LeeJunHyun U_Net (widths 64..1024, nearest upsampling + conv).
# --------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """LeeJunHyun ``conv_block``: (biased 3x3 conv -> BN -> ReLU) x 2 in ``conv.{0,1,3,4}``."""

    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(ch_in, ch_out, kernel_size=3, stride=1, padding=1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch_out, ch_out, kernel_size=3, stride=1, padding=1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpConv(nn.Module):
    """LeeJunHyun ``up_conv``: nearest x2 upsample -> biased 3x3 conv -> BN -> ReLU (``up.{1,2}``)."""

    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(ch_in, ch_out, kernel_size=3, stride=1, padding=1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNetClassic(nn.Module):
    """LeeJunHyun ``U_Net`` (``network.py`` @5e9da93); same attribute names, same forward, logits out."""

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
        self.Up_conv5 = ConvBlock(c[4], c[3])
        self.Up4 = UpConv(c[3], c[2])
        self.Up_conv4 = ConvBlock(c[3], c[2])
        self.Up3 = UpConv(c[2], c[1])
        self.Up_conv3 = ConvBlock(c[2], c[1])
        self.Up2 = UpConv(c[1], c[0])
        self.Up_conv2 = ConvBlock(c[1], c[0])
        self.Conv_1x1 = nn.Conv2d(c[0], num_classes, kernel_size=1, stride=1, padding=0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x1 = self.Conv1(x)
        x2 = self.Conv2(self.Maxpool(x1))
        x3 = self.Conv3(self.Maxpool(x2))
        x4 = self.Conv4(self.Maxpool(x3))
        x5 = self.Conv5(self.Maxpool(x4))
        return x1, x2, x3, x4, x5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes, H, W) logits."""
        x = prepare_input(x, self.in_chans, type(self).__name__)
        x1, x2, x3, x4, x5 = self.encode(x)
        d = self.Up_conv5(torch.cat((x4, self.Up5(x5)), dim=1))
        d = self.Up_conv4(torch.cat((x3, self.Up4(d)), dim=1))
        d = self.Up_conv3(torch.cat((x2, self.Up3(d)), dim=1))
        d = self.Up_conv2(torch.cat((x1, self.Up2(d)), dim=1))
        return self.Conv_1x1(d)


# --------------------------------------------------------------------------------------------
# Registration: published rows (VM-UNet Table I for ISIC; Swin-UNet Table 1, reused by VM-UNet
# Table II, for Synapse) and default recipes.
# --------------------------------------------------------------------------------------------

PAPER_UNET = (
    "U-Net: Convolutional Networks for Biomedical Image Segmentation "
    "(Ronneberger, Fischer & Brox, MICCAI 2015)"
)

_SRC_ISIC = (
    "VM-UNet paper Table I, copied from MALUNet/EGE-UNet (unverified; check against the PDFs); "
    "the 7.77M UNet's code, seed and split are unpublished"
)

UNET_PUBLISHED = (
    PublishedResult(
        dataset="isic2017",
        metrics={"miou": 76.98, "dsc": 86.99, "acc": 95.65, "spe": 97.43, "sen": 86.82},
        source=_SRC_ISIC,
    ),
    PublishedResult(
        dataset="isic2018",
        metrics={"miou": 77.86, "dsc": 87.55, "acc": 94.05, "spe": 96.69, "sen": 85.86},
        source=_SRC_ISIC,
    ),
    PublishedResult(
        dataset="synapse",
        # DSC in %, HD95 in voxels; per-organ DSC in the paper's column order.
        metrics={
            "dsc": 76.85,
            "hd95": 39.70,
            "dsc_aorta": 89.07,
            "dsc_gallbladder": 69.72,
            "dsc_kidney_l": 77.77,
            "dsc_kidney_r": 68.60,
            "dsc_liver": 93.43,
            "dsc_pancreas": 53.98,
            "dsc_spleen": 86.67,
            "dsc_stomach": 75.58,
        },
        source=(
            "Swin-UNet paper Table 1, reused by VM-UNet Table II (transcribed); which U-Net "
            "implementation produced it is unpublished"
        ),
    ),
)


def _recipe(note: str) -> dict[str, Any]:
    """Default recipe: the VM-UNet/MALUNet protocol these baselines' rows are compared under.

    The ISIC baseline rows were copied from MALUNet/EGE-UNet, whose training code for them is
    unpublished; MALUNet's config equals VM-UNet's except batch 8. Every value is therefore the
    protocol's, assumed (not known) to be what produced the published baseline row.
    """
    return {
        "source": "VM-UNet/MALUNet protocol (JCruan519/VM-UNet@43c495b configs/config_setting{,_synapse}.py, "
        "train{,_synapse}.py; MALUNet's config differs only in batch 8); " + note,
        "optimizer": {
            "name": "AdamW",
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 1e-2,
        },
        "scheduler": {"name": "CosineAnnealingLR", "eta_min": 1e-5, "step": "epoch"},  # T_max per dataset
        "epochs": 300,
        "batch_size": 8,  # MALUNet's config (the ISIC rows' origin); VM-UNet itself uses 32
        "seed": 42,
        "amp": False,
        "grad_clip": None,
        "ema": False,
        "warmup_epochs": 0,
        "pretrained": None,
        "input_size": (256, 256),
        "loss": {"name": "bce_dice", "bce_weight": 1.0, "dice_weight": 1.0},
        "assumed": ("optimizer", "scheduler", "epochs", "batch_size", "seed", "loss"),
        "datasets": {
            "isic2017": {
                "num_classes": 1,
                "input_size": (256, 256),
                "T_max": 50,
                "loss": "BceDiceLoss(wb=1, wd=1): BCE on sigmoid + soft Dice",
                "selection": "lowest val loss (val = test split, protocol P1)",
            },
            "isic2018": {
                "num_classes": 1,
                "input_size": (256, 256),
                "T_max": 50,
                "loss": "BceDiceLoss(wb=1, wd=1): BCE on sigmoid + soft Dice",
                "selection": "lowest val loss (val = test split, protocol P1)",
            },
            "synapse": {
                "num_classes": 9,
                "input_size": (224, 224),
                "T_max": 100,
                "batch_size": 32,
                "loss": "CeDiceLoss(9, loss_weight=[1, 1]): CE on logits + soft Dice over all 9 classes",
                "selection": "lowest mean training loss of an epoch (VM-UNet Synapse protocol; assumed)",
            },
        },
    }


UNET_RECIPE = _recipe(
    "the recipe behind the published UNet rows is unpublished, so every value here is assumed"
)
UNET_CLASSIC_RECIPE = {
    **_recipe("LeeJunHyun U_Net has no published row; the benchmark trains it under this protocol"),
    # What LeeJunHyun's own main.py/solver.py do (@5e9da93), for reference only: its
    # main.py redraws lr, epochs, decay epoch and augmentation probability at random every run.
    "reference_training": {
        "optimizer": {"name": "Adam", "betas": (0.5, 0.999), "lr": "rand * 5e-4 + 5e-7 (random per run)"},
        "loss": "BCELoss on sigmoid outputs",
        "batch_size": 1,
        "epochs": "random from {100, 150, 200, 250}",
        "scheduler": "linear decay over the last num_epochs_decay epochs (random per run)",
    },
}


@register_model(
    "unet",
    family="unet",
    paper=PAPER_UNET,
    input_size=(256, 256),
    description=(
        "UNet of the MALUNet/EGE-UNet/VM-UNet ISIC tables (rebuild: milesial layout, width 32, "
        "BN, transposed-conv up); 7,765,985 params (7,763,041 with conv_bias=False); returns logits"
    ),
    published=UNET_PUBLISHED,
    recipe=UNET_RECIPE,
)
def unet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> UNet:
    """Build the ISIC-table UNet; ``overrides``: ``base_channels`` (32), ``conv_bias`` (True)."""
    return UNet(num_classes=num_classes, in_chans=in_chans, **overrides)


@register_model(
    "unet-classic",
    family="unet",
    paper=PAPER_UNET + "; implementation LeeJunHyun/Image_Segmentation U_Net (network.py @5e9da93)",
    input_size=(256, 256),
    description=(
        "LeeJunHyun U_Net: widths 64-1024, BN, nearest-upsample + 3x3 conv; 34,527,041 params "
        "(the '34.52M UNet' of VM-UNet issue #22); no published ISIC or Synapse row; returns logits"
    ),
    published=(),
    recipe=UNET_CLASSIC_RECIPE,
)
def unet_classic(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> UNetClassic:
    """Build LeeJunHyun's ``U_Net``; ``overrides``: ``base_channels`` (64)."""
    return UNetClassic(num_classes=num_classes, in_chans=in_chans, **overrides)
