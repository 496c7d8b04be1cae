"""nnU-Net's default 2d plan for 256x256 images and its trainer's recipe, in one place.

The nnU-Net CNN baselines (``baselines.nnunet``: ``nnunet``, ``resenc-unet-m``) and U-Mamba
(:mod:`vmbench.models.umamba`, which trains with nnU-Net's trainer on nnU-Net's plan) all build
from the numbers here. They are what nnU-Net's planners write into ``nnUNetPlans.json`` for a 2D
dataset of 256x256 images at spacing 1 (MIC-DKFZ/nnUNet@0e495086, v2.8.1:
``experiment_planning/experiment_planners/default_experiment_planner.py`` and
``residual_unets/residual_encoder_unet_planners.py``; the same for 1 and 3 input channels):

* patch 256x256, 7 stages, 3x3 kernels, strides [1,1] then [2,2] x6, features
  32-64-128-256-512-512-512 (``UNet_base_num_features`` 32 doubled per stage, capped at 512);
* conv bias on, ``InstanceNorm2d(eps=1e-5, affine=True)``, ``LeakyReLU(inplace=True)``
  (slope 0.01), no dropout, He initialisation ``InitWeights_He(1e-2)``;
* plain U-Net (``PlainConvUNet``): 2 convs per stage in encoder and decoder; batch size 49;
* ResEnc M (``nnUNetPlannerResEncM``, ``ResidualEncoderUNet``): residual blocks per encoder
  stage [1,3,4,6,6,6,6], 1 conv per decoder stage; batch size 50.

The batch sizes are the planners' formula, ``round(reference / estimate * 12)`` with the 8 GB
reference (85e6 for the plain planner, 135e6 for ResEnc M) and ``estimate`` the network's
``compute_conv_feature_map_size((256, 256))`` (20,627,456 and 32,317,440 for 3 channels and 2
labels), capped at 5 % of the dataset's pixels (no cap for ResEnc M), which ISIC's thousands of
images never reach. U-Mamba's fork (bowang-lab/U-Mamba@28459e33) plans with the same plain
estimate and reference, so it gets the same plan and batch size 49.

Deep supervision: the decoder has one 1x1 segmentation head per stage (6 here), in the state dict
whether deep supervision is on or not. With it on the network returns the 6 logit maps, full
resolution first (256, 128, ..., 8). nnU-Net weighs them ``1/2**i``, sets the lowest
resolution's weight to 0 and normalises (:func:`deep_supervision_weights`), and compares each with
the target **downsampled** to its size by nearest-exact interpolation
(:mod:`vmbench.losses.nnunet`). These models declare ``deep_supervision_targets = "downsample"`` so
the trainer can tell them from TransFuse, whose heads are all at full resolution.

One output channel: nnU-Net itself has no one-output softmax (a binary task is 2 softmax outputs,
or 1 sigmoid output when trained as a region). vmbench's binary tasks use 1 logit channel with
sigmoid losses, i.e. nnU-Net's region-style output (``DC_and_BCE_loss``); ``num_classes=1``
builds exactly that head.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vmbench.errors import ModelInputError
from vmbench.models.inputs import check_image_batch

__all__ = [
    "DEEP_SUPERVISION_TARGETS",
    "NNUNET_2D_256",
    "NNUNET_PAPER",
    "NNUNET_TRAINER_RECIPE",
    "NnUNetPlan2D",
    "RESENC_M_2D_256",
    "RESENC_PAPER",
    "check_input",
    "deep_supervision_weights",
    "PlannedUNetMixin",
    "check_widths",
    "select_outputs",
    "trainer_recipe",
]

NNUNET_PAPER = (
    "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation "
    "(Isensee et al., Nature Methods 2021)"
)
RESENC_PAPER = (
    "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation "
    "(Isensee et al., MICCAI 2024)"
)

#: What the models declare for the trainer: their deep-supervision outputs are compared with
#: targets downsampled to each output's size (nnU-Net), not with upsampled logits.
DEEP_SUPERVISION_TARGETS = "downsample"


@dataclass(frozen=True)
class NnUNetPlan2D:
    """One nnU-Net 2d configuration (the ``architecture`` and ``batch_size`` of a plans file)."""

    name: str
    patch_size: tuple[int, int]
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, int], ...]
    strides: tuple[tuple[int, int], ...]
    n_conv_per_stage: tuple[int, ...]  # encoder convs (plain) or residual blocks (ResEnc) per stage
    n_conv_per_stage_decoder: tuple[int, ...]
    batch_size: int
    conv_bias: bool = True
    norm_eps: float = 1e-5
    he_neg_slope: float = 1e-2

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def divisor(self) -> tuple[int, int]:
        """Input sides must be multiples of this (the product of the strides)."""
        return tuple(math.prod(s[axis] for s in self.strides) for axis in range(2))

    @property
    def min_size(self) -> tuple[int, int]:
        """Smallest input: the bottleneck must be at least 2x2, or InstanceNorm has one value."""
        return tuple(2 * d for d in self.divisor)

    def arch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of dynamic-network-architectures' U-Nets, block counts excepted."""
        return {
            "n_stages": self.n_stages,
            "features_per_stage": list(self.features_per_stage),
            "conv_op": nn.Conv2d,
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
            "strides": [list(s) for s in self.strides],
            "conv_bias": self.conv_bias,
            "norm_op": nn.InstanceNorm2d,
            "norm_op_kwargs": {"eps": self.norm_eps, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": nn.LeakyReLU,
            "nonlin_kwargs": {"inplace": True},
        }


NNUNET_2D_256 = NnUNetPlan2D(
    name="nnUNetPlans 2d (256x256, spacing 1)",
    patch_size=(256, 256),
    features_per_stage=(32, 64, 128, 256, 512, 512, 512),
    kernel_sizes=((3, 3),) * 7,
    strides=((1, 1),) + ((2, 2),) * 6,
    n_conv_per_stage=(2,) * 7,
    n_conv_per_stage_decoder=(2,) * 6,
    batch_size=49,
)

RESENC_M_2D_256 = dataclasses.replace(
    NNUNET_2D_256,
    name="nnUNetResEncUNetMPlans 2d (256x256, spacing 1)",
    n_conv_per_stage=(1, 3, 4, 6, 6, 6, 6),
    n_conv_per_stage_decoder=(1,) * 6,
    batch_size=50,
)


def deep_supervision_weights(n_outputs: int) -> tuple[float, ...]:
    """nnU-Net's loss weights for ``n_outputs`` outputs, full resolution first.

    ``1/2**i`` for output ``i``, the lowest resolution set to 0, normalised to sum 1
    (``nnUNetTrainer._build_loss``).
    """
    if n_outputs < 2:
        raise ValueError(f"deep supervision needs at least 2 outputs, got {n_outputs}")
    weights = [0.5**i for i in range(n_outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return tuple(w / total for w in weights)


def check_input(
    x: torch.Tensor, in_chans: int, model_name: str, plan: NnUNetPlan2D, exact: bool = False
) -> torch.Tensor:
    """Check a (B, C, H, W) input against the plan; repeat a grey image to 3 channels.

    Sides must be multiples of the strides' product (64) and at least twice that (128, a 2x2
    bottleneck). ``exact``: the model's layer sizes are fixed by the patch (UMambaEnc), so only
    the plan's patch size is accepted. Anything else is a one-line :class:`ModelInputError`.
    """
    x = check_image_batch(x, model=model_name, in_chans=in_chans, multiple=plan.divisor[0], gray_to_rgb=True)
    size = tuple(x.shape[2:])
    got, patch = "x".join(map(str, size)), "x".join(map(str, plan.patch_size))
    if exact and size != plan.patch_size:
        raise ModelInputError(
            f"{model_name} is built for its {patch} patch only (its Mamba layers' sizes depend on it), "
            f"got {got}; set data.img_size (--img-size) to {plan.patch_size[0]}"
        )
    if any(s < m for s, m in zip(size, plan.min_size)):
        raise ModelInputError(
            f"{model_name} needs height and width that are multiples of {plan.divisor[0]} and at least "
            f"{plan.min_size[0]} ({plan.n_stages - 1} downsampling stages; a 1x1 bottleneck cannot be "
            f"instance-normalised), got {got}; set data.img_size (--img-size) to {plan.patch_size[0]}"
        )
    return x


def select_outputs(module: nn.Module, outputs: Any) -> Any:
    """Deep-supervision outputs while training; the full-resolution logits otherwise.

    nnU-Net's predictor switches deep supervision off for inference; vmbench's evaluation reads
    one tensor, so ``eval()`` returns the first (full-resolution) output.
    """
    if isinstance(outputs, (list, tuple)) and not module.training:
        return outputs[0]
    return outputs


class PlannedUNetMixin:
    """What every network built on an nnU-Net plan adds to its ``nn.Module``.

    The input check (:func:`check_input`), the outputs of :func:`select_outputs`, nnU-Net's
    ``set_deep_supervision_enabled`` and the deep-supervision declaration the trainer reads
    (``deep_supervision_weights``, ``deep_supervision_targets``). ``model_name`` names the model
    in error messages; ``exact_input`` accepts the plan's patch size only.
    """

    model_name = "nnunet"
    exact_input = False
    deep_supervision_targets = DEEP_SUPERVISION_TARGETS

    def _init_planned(self, plan: NnUNetPlan2D, num_classes: int, in_chans: int) -> None:
        self.plan = plan
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.deep_supervision_weights = deep_supervision_weights(plan.n_stages - 1)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """nnU-Net's switch: the decoder's flag decides whether it returns every output."""
        if not isinstance(enabled, bool):
            raise ValueError(f"deep_supervision must be true or false, got {enabled!r}")
        self.decoder.deep_supervision = enabled

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        return check_input(x, self.in_chans, self.model_name, self.plan, exact=self.exact_input)

    def _finish(self, outputs: Any) -> Any:
        return select_outputs(self, outputs)


def check_widths(num_classes: int, in_chans: int) -> None:
    """``num_classes`` and ``in_chans`` must be positive integers."""
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


NNUNET_TRAINER_RECIPE: dict[str, Any] = {
    "source": (
        "nnUNetTrainer (MIC-DKFZ/nnUNet@0e495086, nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py); "
        "U-Mamba's trainers subclass the same trainer (bowang-lab/U-Mamba@28459e33)"
    ),
    "optimizer": {"name": "SGD", "lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
    "scheduler": {"name": "PolyLRScheduler", "exponent": 0.9, "step": "epoch", "lr": "1e-2 * (1 - epoch / 1000) ** 0.9"},
    "epochs": 1000,
    "iterations_per_epoch": 250,
    "grad_clip": 12.0,
    "amp": "fp16 autocast with GradScaler on CUDA",
    "deep_supervision": "on; weights 1/2**i, lowest resolution 0, normalised; targets downsampled nearest-exact",
    "loss": (
        "labels: DC_and_CE_loss (CE + MemoryEfficientSoftDiceLoss, batch_dice true for 2d, no background, "
        "smooth 1e-5); regions (one sigmoid output): DC_and_BCE_loss (BCE + soft Dice, background included)"
    ),
    "oversample_foreground_percent": 0.33,
    "normalization": "ZScoreNormalization per channel (non-CT images)",
    "augmentation": (
        "SpatialTransform (rotation p 0.2 over +-180 deg, scaling p 0.2 in [0.7, 1.4]), Gaussian noise p 0.1, "
        "Gaussian blur p 0.2, brightness p 0.15, contrast p 0.15, low resolution p 0.25, gamma p 0.1 (inverted) "
        "and p 0.3, mirroring on both axes"
    ),
    "inference": "sliding window (tile step 0.5, Gaussian weighting) with mirroring test-time augmentation",
}


def trainer_recipe(plan: NnUNetPlan2D, **extra: Any) -> dict[str, Any]:
    """The trainer's recipe at ``plan``'s batch size and patch (a model's registry recipe)."""
    return {**NNUNET_TRAINER_RECIPE, "batch_size": plan.batch_size, "input_size": plan.patch_size, **extra}
