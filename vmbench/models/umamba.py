"""U-Mamba 2D (Ma, Li & Wang 2024): nnU-Net's residual U-Net with Mamba layers, on vmbench's Mamba.

Built as bowang-lab/U-Mamba@28459e33 builds it for nnU-Net's default 2d plan at 256x256
(``umamba/nnunetv2/nets/UMambaBot_2d.py`` and ``UMambaEnc_2d.py``, the plan in
:mod:`vmbench.models.nnunet_plan`), with the same module names, so the official checkpoints'
``network_weights`` load with ``strict=True``:

* U-Mamba rewrites the plan's block counts: the second half of the encoder stages gets 1 block
  (encoder [2,2,2,2,1,1,1], plus a stem of 2 blocks at 32 channels) and the decoder's deepest
  stages 2, the rest 1 (decoder [2,2,2,2,1,1], bottom-up).
* Every stage starts with ``BasicResBlock`` (3x3 conv -> IN -> LeakyReLU -> 3x3 conv -> IN, a
  1x1 conv on the shortcut, LeakyReLU after the sum; its convs always have biases); the other
  blocks are dynamic-network-architectures' ``BasicBlockD``. Stride-2 convs downsample.
* The decoder upsamples by nearest interpolation then a 1x1 conv (``UpsampleLayer``), concatenates
  the skip, and has a 1x1 head per stage (in the state dict whether deep supervision is on or not).
  Its last stage takes no skip: the full-resolution encoder output is never used (as official).
* ``umamba-bot``: one Mamba layer (LayerNorm + Mamba, d_state 16, d_conv 4, expand 2) on the
  512-channel bottleneck's pixels as tokens.
* ``umamba-enc``: a Mamba layer after encoder stages 0, 2, 4 and 6. Where a stage's map has no
  more pixels than channels (stages 4-6 at 256x256) the channels are the tokens and the pixels the
  model dimension: patch tokens of 32 and 128 channels at stages 0 and 2, channel tokens with
  d_model 16x16 = 256 and 2x2 = 16 at stages 4 and 6. The sizes depend on the patch, so it takes
  exactly 256x256.
* He initialisation ``InitWeights_He(1e-2)`` of the 2D convs; the Mamba and LayerNorm parameters
  keep their own initialisation.
* Ablation twins (:mod:`vmbench.models.mamba`): in ``~no-mamba`` the Mamba of each Mamba layer is
  the identity and the layer's LayerNorm still acts, so ``umamba-bot~no-mamba`` is the residual
  U-Net with a per-pixel LayerNorm over the bottleneck's 512 channels (a layer with no residual
  path of its own, as official, cannot keep one).

47,514,022 / 47,515,532 / 47,526,102 parameters (Bot) and 46,386,662 / 46,388,172 / 46,398,742
(Enc) for 3 input channels and 1 / 2 / 9 outputs.

Differences on purpose:

* The Mamba block is :class:`vmbench.models.mamba.Mamba` (mamba-ssm's interface, parameters and
  initialisation on vmbench's selective scan), not the compiled ``mamba_ssm``.
* The Mamba layers run in fp32 under autocast as the official (``autocast(enabled=False)``), and
  bf16 inputs are cast to fp32 like fp16 ones (the official only meets fp16).
* Logits out; with deep supervision ``train()`` returns the 6 outputs, full resolution first, and
  ``eval()`` the full-resolution logits only (nnU-Net's predictor switches deep supervision off).
  ``num_classes=1`` is nnU-Net's region-style sigmoid output.
* A 1-channel image is repeated to 3 channels for a model built for 3; a size the model cannot take
  is a one-line ``ModelInputError`` (the official asserts or fails inside InstanceNorm).

No published rows: the U-Mamba paper evaluates on abdomen CT and MR, endoscopy and microscopy
data sets, none of which vmbench has.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from vmbench.errors import ModelInputError
from vmbench.models.mamba import Mamba
from vmbench.models.nnunet_plan import NNUNET_2D_256, NnUNetPlan2D, PlannedUNetMixin, check_widths, trainer_recipe
from vmbench.registry import register_model

__all__ = [
    "BasicResBlock",
    "MambaLayer",
    "ResidualMambaEncoder",
    "UMambaBot",
    "UMambaEnc",
    "UNetResDecoder",
    "UNetResEncoder",
    "UpsampleLayer",
    "umamba_block_counts",
    "umamba_bot",
    "umamba_enc",
]

PAPER = (
    "U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation "
    "(Ma, Li & Wang, arXiv 2401.04722, 2024)"
)
SOURCE = "bowang-lab/U-Mamba@28459e33"


def umamba_block_counts(plan: NnUNetPlan2D) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """U-Mamba's rewrite of the plan's encoder and decoder block counts (UMambaBot/UMambaEnc
    ``__init__``): encoder stages from ``ceil(n/2)`` on and decoder stages from
    ``ceil((n-1)/2 + 0.5)`` on get 1 block; the plan's list itself is left alone."""
    n = plan.n_stages
    encoder = [c if s < math.ceil(n / 2) else 1 for s, c in enumerate(plan.n_conv_per_stage)]
    decoder = [c if s < math.ceil((n - 1) / 2 + 0.5) else 1 for s, c in enumerate(plan.n_conv_per_stage_decoder)]
    return tuple(encoder), tuple(decoder)


def _norm(channels: int, plan: NnUNetPlan2D) -> nn.Module:
    return nn.InstanceNorm2d(channels, eps=plan.norm_eps, affine=True)


class BasicResBlock(nn.Module):
    """conv -> IN -> LeakyReLU -> conv -> IN, plus the (1x1-conv) shortcut, then LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, plan: NnUNetPlan2D, kernel_size: Sequence[int],
                 stride: Sequence[int] = (1, 1), use_1x1conv: bool = False):
        super().__init__()
        padding = [k // 2 for k in kernel_size]
        self.conv1 = nn.Conv2d(in_ch, out_ch, tuple(kernel_size), stride=tuple(stride), padding=padding)
        self.norm1 = _norm(out_ch, plan)
        self.act1 = nn.LeakyReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, tuple(kernel_size), padding=padding)
        self.norm2 = _norm(out_ch, plan)
        self.act2 = nn.LeakyReLU(inplace=True)
        self.conv3 = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=tuple(stride)) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return self.act2(y + x)


def _stage(in_ch: int, out_ch: int, n_blocks: int, plan: NnUNetPlan2D, kernel_size, stride) -> nn.Sequential:
    """A ``BasicResBlock`` (with the shortcut conv) followed by ``n_blocks - 1`` ``BasicBlockD``."""
    blocks = [BasicResBlock(in_ch, out_ch, plan, kernel_size, stride, use_1x1conv=True)]
    blocks += [
        BasicBlockD(
            conv_op=nn.Conv2d, input_channels=out_ch, output_channels=out_ch, kernel_size=list(kernel_size),
            stride=1, conv_bias=plan.conv_bias, norm_op=nn.InstanceNorm2d,
            norm_op_kwargs={"eps": plan.norm_eps, "affine": True},
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        )
        for _ in range(n_blocks - 1)
    ]
    return nn.Sequential(*blocks)


class UpsampleLayer(nn.Module):
    """Nearest upsampling by the stage's stride, then a 1x1 conv to the skip's channels."""

    def __init__(self, in_ch: int, out_ch: int, scale: Sequence[int]):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
        self.scale = tuple(int(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class MambaLayer(nn.Module):
    """LayerNorm + Mamba over a feature map's tokens, in fp32 (no residual, as official).

    Patch tokens (default): the ``H*W`` pixels are the sequence, the ``dim`` channels the model
    dimension. ``channel_token``: the channels are the sequence and the ``dim = H*W`` pixels the
    model dimension.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, channel_token: bool = False):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.channel_token = channel_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            batch, channels = x.shape[:2]
            if self.channel_token:
                tokens = x.flatten(2)  # (B, C, H*W): C tokens of H*W features
                return self.mamba(self.norm(tokens)).reshape(x.shape)
            tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
            out = self.mamba(self.norm(tokens))
            return out.transpose(1, 2).reshape(batch, channels, *x.shape[2:])


def _describe_encoder(encoder: nn.Module, plan: NnUNetPlan2D) -> None:
    """What the decoder reads from its encoder (plain attributes, not modules)."""
    encoder.output_channels = list(plan.features_per_stage)
    encoder.strides = [list(s) for s in plan.strides]
    encoder.kernel_sizes = [list(k) for k in plan.kernel_sizes]


def _stem(in_chans: int, plan: NnUNetPlan2D, n_blocks: Sequence[int]) -> nn.Sequential:
    """The stem: stage 0's block count at stage 0's width, stride 1."""
    return _stage(in_chans, plan.features_per_stage[0], n_blocks[0], plan, plan.kernel_sizes[0], (1, 1))


def _encoder_stages(plan: NnUNetPlan2D, n_blocks: Sequence[int]) -> list[nn.Sequential]:
    channels = [plan.features_per_stage[0], *plan.features_per_stage]
    return [
        _stage(channels[s], channels[s + 1], n_blocks[s], plan, plan.kernel_sizes[s], plan.strides[s])
        for s in range(plan.n_stages)
    ]


class UNetResEncoder(nn.Module):
    """U-Mamba's residual encoder (UMambaBot): a 2-block stem, then one residual stage per plan stage."""

    def __init__(self, in_chans: int, plan: NnUNetPlan2D, n_blocks: Sequence[int]):
        super().__init__()
        _describe_encoder(self, plan)
        self.stem = _stem(in_chans, plan, n_blocks)
        self.stages = nn.Sequential(*_encoder_stages(plan, n_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualMambaEncoder(nn.Module):
    """UMambaEnc's encoder: the residual encoder with a Mamba layer after every other stage.

    The stages with a Mamba layer are those where ``s % 2 != n_stages % 2`` (the last always has
    one); a stage whose map has no more pixels than channels uses channel tokens.
    """

    def __init__(self, in_chans: int, plan: NnUNetPlan2D, n_blocks: Sequence[int]):
        super().__init__()
        _describe_encoder(self, plan)
        self.stem = _stem(in_chans, plan, n_blocks)
        layers: list[nn.Module] = []
        size = plan.patch_size
        for s in range(plan.n_stages):
            size = tuple(i // j for i, j in zip(size, plan.strides[s]))
            pixels = math.prod(size)
            channel_token = pixels <= plan.features_per_stage[s]
            if bool(s % 2) ^ bool(plan.n_stages % 2):
                dim = pixels if channel_token else plan.features_per_stage[s]
                layers.append(MambaLayer(dim, channel_token=channel_token))
            else:
                layers.append(nn.Identity())
        # Registered before the stages, as the official (the state dict's order follows).
        self.mamba_layers = nn.ModuleList(layers)
        self.stages = nn.ModuleList(_encoder_stages(plan, n_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers):
            x = mamba(stage(x))
            skips.append(x)
        return skips


class UNetResDecoder(nn.Module):
    """U-Mamba's decoder: nearest-upsample + 1x1 conv, concat skip, residual stage, 1x1 head.

    ``self.encoder`` is the encoder itself (its parameters appear again as ``decoder.encoder.*``
    in the state dict, as official).
    """

    def __init__(self, encoder: UNetResEncoder, num_classes: int, plan: NnUNetPlan2D,
                 n_blocks: Sequence[int], deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.num_classes = num_classes
        stages, upsample_layers, seg_layers = [], [], []
        n = plan.n_stages
        for s in range(1, n):
            below, skip = plan.features_per_stage[-s], plan.features_per_stage[-(s + 1)]
            upsample_layers.append(UpsampleLayer(below, skip, plan.strides[-s]))
            in_ch = 2 * skip if s < n - 1 else skip  # the last stage takes no skip
            stages.append(_stage(in_ch, skip, n_blocks[s - 1], plan, plan.kernel_sizes[-(s + 1)], (1, 1)))
            seg_layers.append(nn.Conv2d(skip, num_classes, kernel_size=1))
        self.stages = nn.ModuleList(stages)
        self.upsample_layers = nn.ModuleList(upsample_layers)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: list[torch.Tensor]) -> Any:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (up, stage) in enumerate(zip(self.upsample_layers, self.stages)):
            x = up(x)
            if s < last:
                x = torch.cat((x, skips[-(s + 2)]), dim=1)
            x = stage(x)
            if self.deep_supervision or s == last:
                outputs.append(self.seg_layers[s](x))
        outputs.reverse()  # full resolution first
        return outputs if self.deep_supervision else outputs[0]


class UMambaBot(PlannedUNetMixin, nn.Module):
    """U-Mamba_Bot 2D: the residual U-Net with one Mamba layer at the bottleneck."""

    model_name = "umamba-bot"

    def __init__(self, num_classes: int = 1, in_chans: int = 3, deep_supervision: bool = True,
                 plan: NnUNetPlan2D = NNUNET_2D_256):
        check_widths(num_classes, in_chans)
        super().__init__()
        n_enc, n_dec = umamba_block_counts(plan)
        self.encoder = UNetResEncoder(in_chans, plan, n_enc)
        self.mamba_layer = MambaLayer(plan.features_per_stage[-1])
        self.decoder = UNetResDecoder(self.encoder, num_classes, plan, n_dec, bool(deep_supervision))
        self._init_planned(plan, num_classes, in_chans)
        self.apply(InitWeights_He(plan.he_neg_slope))

    def forward(self, x: torch.Tensor) -> Any:
        """(B, C, H, W) -> logits (B, num_classes, H, W); a list of 6 scales in train() with DS."""
        skips = self.encoder(self._check(x))
        skips[-1] = self.mamba_layer(skips[-1])
        return self._finish(self.decoder(skips))


class UMambaEnc(PlannedUNetMixin, nn.Module):
    """U-Mamba_Enc 2D: a Mamba layer after every other encoder stage; built for one patch size."""

    model_name = "umamba-enc"
    exact_input = True

    def __init__(self, num_classes: int = 1, in_chans: int = 3, deep_supervision: bool = True,
                 plan: NnUNetPlan2D = NNUNET_2D_256, img_size: int | Sequence[int] | None = None):
        check_widths(num_classes, in_chans)
        if img_size is not None:
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            if size != plan.patch_size:
                raise ModelInputError(
                    f"umamba-enc is built for the {plan.patch_size[0]}x{plan.patch_size[1]} patch of nnU-Net's "
                    f"2d plan (its Mamba layers' sizes depend on it), got img_size {size}; "
                    f"set data.img_size (--img-size) to {plan.patch_size[0]}"
                )
        super().__init__()
        n_enc, n_dec = umamba_block_counts(plan)
        self.encoder = ResidualMambaEncoder(in_chans, plan, n_enc)
        self.decoder = UNetResDecoder(self.encoder, num_classes, plan, n_dec, bool(deep_supervision))
        self._init_planned(plan, num_classes, in_chans)
        self.apply(InitWeights_He(plan.he_neg_slope))

    def forward(self, x: torch.Tensor) -> Any:
        """(B, C, 256, 256) -> logits (B, num_classes, 256, 256); a list of 6 scales in train() with DS."""
        return self._finish(self.decoder(self.encoder(self._check(x))))


_RECIPE = trainer_recipe(
    NNUNET_2D_256,
    source=f"{SOURCE}: nnUNetTrainerUMambaBot / nnUNetTrainerUMambaEnc subclass nnU-Net's nnUNetTrainer "
    "(umamba/nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py), changing only the network",
    note="vmbench's config cannot express all of it yet (Nesterov, iterations per epoch, nnU-Net's loss and augmentation)",
)


@register_model(
    "umamba-bot",
    family="umamba",
    paper=PAPER,
    mamba_parts=True,  # ablation twins: name~no-ssm, name~no-mamba
    input_size=NNUNET_2D_256.patch_size,
    description=(
        f"U-Mamba_Bot 2D ({SOURCE}) at nnU-Net's 2d plan for 256x256: residual U-Net, Mamba at the "
        "512-channel bottleneck, deep supervision; 47,514,022 params; inputs multiples of 64, >= 128; logits"
    ),
    published=(),
    recipe=_RECIPE,
)
def umamba_bot(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> UMambaBot:
    """Build U-Mamba_Bot 2D; ``overrides``: ``deep_supervision`` (True)."""
    return UMambaBot(num_classes=num_classes, in_chans=in_chans, **overrides)


@register_model(
    "umamba-enc",
    family="umamba",
    paper=PAPER,
    mamba_parts=True,  # ablation twins: name~no-ssm, name~no-mamba
    input_size=NNUNET_2D_256.patch_size,
    description=(
        f"U-Mamba_Enc 2D ({SOURCE}) at nnU-Net's 2d plan for 256x256: Mamba after encoder stages 0, 2, 4, 6, "
        "deep supervision; 46,386,662 params; exactly 256x256; logits"
    ),
    published=(),
    recipe=_RECIPE,
)
def umamba_enc(num_classes: int = 1, in_chans: int = 3, img_size: Any = None, **overrides: Any) -> UMambaEnc:
    """Build U-Mamba_Enc 2D for the 256x256 patch; ``overrides``: ``deep_supervision`` (True)."""
    return UMambaEnc(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **overrides)
