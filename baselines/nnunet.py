"""nnU-Net's CNNs at nnU-Net's 2d plan for 256x256 images: the baseline to beat.

*nnU-Net Revisited* (Isensee et al., MICCAI 2024) found that a well-configured CNN U-Net trained
by nnU-Net matches or beats the transformer and Mamba U-Nets once they are compared fairly. Both
networks are built with nnU-Net's own architecture package, ``dynamic-network-architectures``
(0.3.1: its ``PlainConvUNet`` and ``ResidualEncoderUNet`` build the same modules, keys and
counts as the 0.4.x nnU-Net 2.8.1 uses), from the plan in :mod:`vmbench.models.nnunet_plan`.

``nnunet``
    ``PlainConvUNet``: 2 convs (conv -> InstanceNorm -> LeakyReLU) per stage in encoder and
    decoder, strided-conv downsampling, transposed-conv upsampling, 1x1 heads;
    33,470,886 / 33,472,396 / 33,482,966 parameters (3 in, 1 / 2 / 9 out).
``resenc-unet-m``
    ``ResidualEncoderUNet`` as ``nnUNetPlannerResEncM`` plans it: a 1-conv stem, residual
    ``BasicBlockD`` blocks [1,3,4,6,6,6,6] per encoder stage, 1 conv per decoder stage; the last
    norm of every residual block starts at zero (``init_last_bn_before_add_to_0``);
    105,915,878 / 105,917,388 / 105,927,958 parameters.

Both keep the library's modules, so their ``state_dict`` keys are nnU-Net's (``encoder.*``,
``decoder.*``, and the decoder's reference to the encoder as ``decoder.encoder.*``; conv and norm
tensors also appear under ``all_modules.*``): nnU-Net checkpoints' ``network_weights`` load with
``strict=True``. He initialisation (``InitWeights_He(1e-2)``) as nnU-Net applies it.

Differences on purpose:

* Logits out. With ``deep_supervision=True`` (the default, as nnU-Net trains) ``train()`` returns
  the 6 decoder outputs, full resolution first, exactly as the library does; ``eval()`` returns
  only the full-resolution logits (nnU-Net's predictor switches deep supervision off).
* ``num_classes=1`` is nnU-Net's region-style single sigmoid output (nnU-Net has no one-output
  softmax); vmbench's binary losses apply the sigmoid.
* A 1-channel image is repeated to 3 channels for a model built for 3, as vmbench's other models.
* Inputs must be multiples of 64 and at least 128 on each side: a one-line ``ModelInputError``
  instead of InstanceNorm's error on the 1x1 bottleneck a 64x64 input gives.

No published rows: nnU-Net Revisited reports 3D results on BTCV, ACDC, LiTS, BraTS, KiTS and AMOS
(BTCV: 13 organs, 5-fold cross-validation), none of them a protocol vmbench runs; the U-Mamba
paper compares against nnU-Net on its own four datasets, none of which vmbench has.
"""

from __future__ import annotations

from typing import Any

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from vmbench.models.nnunet_plan import (
    NNUNET_2D_256,
    NNUNET_PAPER,
    RESENC_M_2D_256,
    RESENC_PAPER,
    NnUNetPlan2D,
    PlannedUNetMixin,
    check_widths,
    trainer_recipe,
)
from vmbench.registry import register_model

__all__ = ["NnUNetPlainUNet", "NnUNetResEncUNet", "nnunet", "resenc_unet_m"]


class NnUNetPlainUNet(PlannedUNetMixin, PlainConvUNet):
    """nnU-Net's plain 2D U-Net (``PlainConvUNet``) at the 256x256 2d plan."""

    model_name = "nnunet"

    def __init__(self, num_classes: int = 1, in_chans: int = 3, deep_supervision: bool = True,
                 plan: NnUNetPlan2D = NNUNET_2D_256):
        check_widths(num_classes, in_chans)
        super().__init__(
            input_channels=in_chans,
            num_classes=num_classes,
            n_conv_per_stage=list(plan.n_conv_per_stage),
            n_conv_per_stage_decoder=list(plan.n_conv_per_stage_decoder),
            deep_supervision=bool(deep_supervision),
            **plan.arch_kwargs(),
        )
        self._init_planned(plan, num_classes, in_chans)
        self.apply(self.initialize)  # get_network_from_plans: network.apply(network.initialize)

    def forward(self, x: torch.Tensor) -> Any:
        """(B, C, H, W) -> logits (B, num_classes, H, W); a list of 6 scales in train() with DS."""
        return self._finish(super().forward(self._check(x)))


class NnUNetResEncUNet(PlannedUNetMixin, ResidualEncoderUNet):
    """nnU-Net's residual-encoder U-Net (``ResidualEncoderUNet``), ResEnc M 2d plan at 256x256."""

    model_name = "resenc-unet-m"

    def __init__(self, num_classes: int = 1, in_chans: int = 3, deep_supervision: bool = True,
                 plan: NnUNetPlan2D = RESENC_M_2D_256):
        check_widths(num_classes, in_chans)
        super().__init__(
            input_channels=in_chans,
            num_classes=num_classes,
            n_blocks_per_stage=list(plan.n_conv_per_stage),
            n_conv_per_stage_decoder=list(plan.n_conv_per_stage_decoder),
            deep_supervision=bool(deep_supervision),
            **plan.arch_kwargs(),
        )
        self._init_planned(plan, num_classes, in_chans)
        self.apply(self.initialize)  # He init, then the residual blocks' last norms to zero

    def forward(self, x: torch.Tensor) -> Any:
        """(B, C, H, W) -> logits (B, num_classes, H, W); a list of 6 scales in train() with DS."""
        return self._finish(super().forward(self._check(x)))


_NOTE = "vmbench's config cannot express all of it yet (Nesterov, iterations per epoch, nnU-Net's loss and augmentation)"


@register_model(
    "nnunet",
    family="nnunet",
    paper=NNUNET_PAPER + "; architecture: dynamic-network-architectures PlainConvUNet",
    input_size=NNUNET_2D_256.patch_size,
    description=(
        "nnU-Net's plain 2D U-Net at the default 2d plan for 256x256 (7 stages, 32-512 features, "
        "InstanceNorm, LeakyReLU, deep supervision); 33,470,886 params; inputs multiples of 64, >= 128; logits"
    ),
    published=(),
    recipe=trainer_recipe(NNUNET_2D_256, note=_NOTE),
)
def nnunet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> NnUNetPlainUNet:
    """Build nnU-Net's plain U-Net; ``overrides``: ``deep_supervision`` (True)."""
    return NnUNetPlainUNet(num_classes=num_classes, in_chans=in_chans, **overrides)


@register_model(
    "resenc-unet-m",
    family="nnunet",
    paper=RESENC_PAPER + "; architecture: dynamic-network-architectures ResidualEncoderUNet",
    input_size=RESENC_M_2D_256.patch_size,
    description=(
        "nnU-Net ResEnc M 2D (residual blocks [1,3,4,6,6,6,6], 1 conv per decoder stage, 32-512 "
        "features, deep supervision); 105,915,878 params; inputs multiples of 64, >= 128; logits"
    ),
    published=(),
    recipe=trainer_recipe(RESENC_M_2D_256, note=_NOTE),
)
def resenc_unet_m(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> NnUNetResEncUNet:
    """Build nnU-Net ResEnc M; ``overrides``: ``deep_supervision`` (True)."""
    return NnUNetResEncUNet(num_classes=num_classes, in_chans=in_chans, **overrides)
