"""LightM-UNet (Liao et al., arXiv 2403.05246) as the official code builds it, 2D.

Official code: MrBlankness/LightM-UNet, commit 6b72e27b, ``lightm-unet/nnunetv2/nets/LightMUNet.py``,
with the values its trainer (``nnUNetTrainerLightMUNet.build_network_architecture``) fixes:
init_filters 32, blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1), spatial_dims from the patch (2
here). Built, as the official is, from MONAI's blocks (``Convolution``, ``get_conv_layer``,
``get_upsample_layer``, ``get_norm_layer``, ``get_act_layer``; MONAI 1.6.1's are identical to the
1.3.0 the repository pins), with the same module tree, parameter names and shapes, PyTorch's
default initialisation plus Mamba's own (no custom init), and the same forward:

* ``convInit``: depthwise 3x3 + pointwise 1x1 (no bias) to 32 channels.
* Encoder level i (32 * 2**i channels): for i > 0 a Mamba layer (LayerNorm, Mamba over all
  pixels as tokens, skip ``skip_scale * x``, the same LayerNorm, Linear to the new width) and a
  2x max-pool, then ``blocks_down[i]`` residual blocks of two (GroupNorm(8), ReLU, Mamba layer).
* Decoder: 1x1 conv halving the width, bilinear 2x upsampling, add the encoder's output of that
  level, ``blocks_up`` residual depthwise-separable blocks.
* Head: GroupNorm, ReLU, depthwise 1x1 + pointwise 1x1 (with bias) to ``num_classes``; logits.

5,011,732 parameters for 3 input channels and 1 output (5,011,765 / 5,011,996 for 2 / 9): the
README's "1M" is not what this code builds. Inputs: sides divisible by 8 (three 2x max-pools),
else ``ModelInputError``. The official returns logits too; nnU-Net trains it with 2 softmax
outputs for a binary task, vmbench with 1 sigmoid output (``num_classes=1``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from vmbench.models.inputs import check_image_batch
from vmbench.models.mamba import Mamba
from vmbench.registry import register_model

__all__ = ["LightMUNet", "MambaLayer", "ResMambaBlock", "ResUpBlock", "lightm_unet"]

PAPER = "LightM-UNet: Mamba Assists in Lightweight UNet for Medical Image Segmentation (Liao et al., arXiv 2403.05246)"


def _monai():
    """MONAI's blocks, imported when a model is built (MONAI's import is slow; vmbench's stays fast)."""
    from monai.networks.blocks.convolutions import Convolution
    from monai.networks.blocks.segresnet_block import get_conv_layer, get_upsample_layer
    from monai.networks.layers.utils import get_act_layer, get_norm_layer

    return Convolution, get_conv_layer, get_upsample_layer, get_act_layer, get_norm_layer


def dwconv_layer(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False):
    """Depthwise ``kernel_size`` conv then pointwise 1x1, both MONAI ``Convolution(conv_only=True)``."""
    Convolution = _monai()[0]
    depth = Convolution(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels, strides=1,
        kernel_size=kernel_size, bias=bias, conv_only=True, groups=in_channels,
    )  # fmt: skip
    point = Convolution(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, strides=1,
        kernel_size=1, bias=bias, conv_only=True, groups=1,
    )  # fmt: skip
    return nn.Sequential(depth, point)


class MambaLayer(nn.Module):
    """(B, C, *spatial) -> (B, output_dim, *spatial): one Mamba over the pixels as tokens.

    out = proj(norm(mamba(norm(x)) + skip_scale * x)), with ONE LayerNorm used twice and the skip
    taken from the un-normalised tokens (unlike UltraLight's PVM layer).
    """

    def __init__(
        self, input_dim: int, output_dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, **mamba_kw
    ):
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mamba = Mamba(d_model=input_dim, d_state=d_state, d_conv=d_conv, expand=expand, **mamba_kw)
        self.proj = nn.Linear(input_dim, output_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:  # as the official layer: the Mamba runs in fp32 under fp16
            x = x.float()
        batch, channels = x.shape[:2]
        spatial = x.shape[2:]
        tokens = x.reshape(batch, channels, -1).transpose(-1, -2)
        mixed = self.mamba(self.norm(tokens)) + self.skip_scale * tokens
        out = self.proj(self.norm(mixed))
        return out.transpose(-1, -2).reshape(batch, self.output_dim, *spatial)


def mamba_layer(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, **mamba_kw) -> nn.Module:
    """A :class:`MambaLayer`, followed by a max-pool when ``stride`` > 1 (the official downsampling)."""
    layer = MambaLayer(in_channels, out_channels, **mamba_kw)
    if stride == 1:
        return layer
    pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    return nn.Sequential(layer, pool(kernel_size=stride, stride=stride))


class ResMambaBlock(nn.Module):
    """x + conv2(act(norm2(conv1(act(norm1(x)))))) with Mamba layers as conv1 and conv2."""

    def __init__(self, spatial_dims: int, in_channels: int, norm, act=("RELU", {"inplace": True}), **mamba_kw):
        super().__init__()
        *_, get_act_layer, get_norm_layer = _monai()
        self.norm1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.norm2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.act = get_act_layer(act)
        self.conv1 = mamba_layer(spatial_dims, in_channels, in_channels, **mamba_kw)
        self.conv2 = mamba_layer(spatial_dims, in_channels, in_channels, **mamba_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.conv1(self.act(self.norm1(x)))
        x = self.conv2(self.act(self.norm2(x)))
        return x + identity


class ResUpBlock(nn.Module):
    """act(norm2(dwconv(act(norm1(x))) + skip_scale * x))."""

    def __init__(
        self, spatial_dims: int, in_channels: int, norm, kernel_size: int = 3, act=("RELU", {"inplace": True})
    ):
        super().__init__()
        *_, get_act_layer, get_norm_layer = _monai()
        self.norm1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.norm2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)
        self.act = get_act_layer(act)
        self.conv = dwconv_layer(spatial_dims, in_channels, in_channels, kernel_size=kernel_size)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.act(self.norm1(x))) + self.skip_scale * x
        return self.act(self.norm2(x))


class LightMUNet(nn.Module):
    """LightM-UNet: (B, in_chans, *spatial) -> (B, num_classes, *spatial) logits; sides divisible by 8.

    Arguments mirror the official ``LightMUNet`` (``in_channels`` -> ``in_chans``, ``out_channels``
    -> ``num_classes``) with the trainer's values as defaults; ``scan_backend`` / ``conv_backend``
    go to every Mamba block. ``dropout_prob`` adds dropout after ``convInit`` as the official does.
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        spatial_dims: int = 2,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        dropout_prob: float | None = None,
        act: tuple | str = ("RELU", {"inplace": True}),
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        upsample_mode: str = "nontrainable",
        scan_backend: str | None = None,
        conv_backend: str | None = None,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"blocks_up needs one entry per upsampling: {len(blocks_down) - 1}, got {list(blocks_up)}")
        _, get_conv_layer, get_upsample_layer, get_act_layer, get_norm_layer = _monai()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.spatial_dims = spatial_dims
        self.init_filters = init_filters
        self.blocks_down = tuple(blocks_down)
        self.blocks_up = tuple(blocks_up)
        self.dropout_prob = dropout_prob
        self.size_multiple = 2 ** (len(blocks_down) - 1)
        mkw = {"scan_backend": scan_backend, "conv_backend": conv_backend}

        # Created in the official order (one seed gives the official weights).
        self.act_mod = get_act_layer(act)
        self.convInit = dwconv_layer(spatial_dims, in_chans, init_filters)
        self.down_layers = nn.ModuleList()
        for i, n_blocks in enumerate(blocks_down):
            width = init_filters * 2**i
            down = mamba_layer(spatial_dims, width // 2, width, stride=2, **mkw) if i > 0 else nn.Identity()
            blocks = [ResMambaBlock(spatial_dims, width, norm=norm, act=act, **mkw) for _ in range(n_blocks)]
            self.down_layers.append(nn.Sequential(down, *blocks))
        self.up_layers, self.up_samples = nn.ModuleList(), nn.ModuleList()
        n_up = len(blocks_up)
        for i in range(n_up):
            width = init_filters * 2 ** (n_up - i)
            self.up_layers.append(
                nn.Sequential(*[ResUpBlock(spatial_dims, width // 2, norm=norm, act=act) for _ in range(blocks_up[i])])
            )
            self.up_samples.append(
                nn.Sequential(
                    get_conv_layer(spatial_dims, width, width // 2, kernel_size=1),
                    get_upsample_layer(spatial_dims, width // 2, upsample_mode=upsample_mode),
                )
            )
        self.conv_final = nn.Sequential(
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=init_filters),
            self.act_mod,
            dwconv_layer(spatial_dims, init_filters, num_classes, kernel_size=1, bias=True),
        )
        if dropout_prob is not None:
            self.dropout = (nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)(dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(
            x, model="LightM-UNet", in_chans=self.in_chans, multiple=self.size_multiple, spatial_dims=self.spatial_dims
        )
        x = self.convInit(x)
        if self.dropout_prob is not None:
            x = self.dropout(x)
        levels = []
        for down in self.down_layers:
            x = down(x)
            levels.append(x)
        levels.reverse()  # levels[0] is x itself; the decoder adds levels[1:]
        for up, up_layer, skip in zip(self.up_samples, self.up_layers, levels[1:]):
            x = up_layer(up(x) + skip)
        return self.conv_final(x)


# --------------------------------------------------------------------------------------------
# Registration. LightM-UNet's paper reports LiTS (3D) and Montgomery & Shenzhen chest X-ray (2D),
# no ISIC or Synapse: there is no published row for vmbench's data sets.
# --------------------------------------------------------------------------------------------

_RECIPE: dict[str, Any] = {
    "source": "MrBlankness/LightM-UNet@6b72e27b nnUNetTrainerLightMUNet.py and its nnUNetTrainer.py",
    "optimizer": {"name": "Adam", "lr": 1e-4, "weight_decay": 1e-5, "eps": 1e-5},
    "scheduler": {"name": "PolyLRScheduler", "exponent": 0.9, "step": "epoch"},
    "epochs": 100,
    "iterations_per_epoch": 250,
    "grad_clip": 12.0,
    "amp": False,
    "deep_supervision": False,
    "loss": "nnU-Net DC_and_CE_loss (softmax over num_segmentation_heads outputs, Dice without background)",
    "batch_size": "from the nnU-Net 2d plan of the data set",
    "input_size": "the nnU-Net 2d plan's patch size",
    "augmentation": "nnU-Net's default 2D augmentation",
}


@register_model(
    "lightm-unet",
    family="lightm-unet",
    paper=PAPER,
    mamba_parts=True,  # ablation twins: name~no-ssm, name~no-mamba
    input_size=(256, 256),
    description="LightM-UNet 2D with the official trainer's values: init_filters 32, blocks_down [1,2,2,4], "
    "blocks_up [1,1,1]; 5.01 M parameters (the README's 1M is not what the code builds); returns logits",
    recipe=_RECIPE,
)
def lightm_unet(num_classes: int = 1, in_chans: int = 3, **overrides: Any) -> LightMUNet:
    """Build the 2D LightM-UNet of the official trainer; ``overrides`` go to :class:`LightMUNet`."""
    return LightMUNet(num_classes=num_classes, in_chans=in_chans, **overrides)
