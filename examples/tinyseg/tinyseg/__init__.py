"""A tiny segmentation network registered with vmbench (the worked example of the README's
"Benchmark your model on your data"). Importing this module registers ``tinyseg``."""

from __future__ import annotations

import torch
from torch import nn

from vmbench.errors import ModelInputError
from vmbench.registry import register_model

__all__ = ["TinySeg", "build"]


class TinySeg(nn.Module):
    """Two stride-2 stages down, two up, a skip at full resolution: logits at the input size."""

    def __init__(self, num_classes: int = 1, in_chans: int = 3, width: int = 16):
        super().__init__()
        self.in_chans = in_chans
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.ReLU(),
        )
        self.head = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            # The contract: a size the model cannot take is a ModelInputError naming the rule.
            raise ModelInputError(f"tinyseg needs height and width divisible by 4, got {tuple(x.shape[-2:])}")
        if x.shape[1] == 1 and self.in_chans == 3:
            # vmbench builds models with 3 input channels and feeds greyscale slices (CT, MR) as 1.
            x = x.expand(-1, 3, -1, -1)
        skip = self.stem(x)
        return self.head(torch.cat([skip, self.up(self.down(skip))], dim=1))


@register_model("tinyseg", family="tinyseg", paper="vmbench example (examples/tinyseg)", input_size=(64, 64),
                description="a 2-stage conv encoder-decoder; the README's worked example")
def tinyseg(num_classes: int = 1, in_chans: int = 3, width: int = 16) -> TinySeg:
    return TinySeg(num_classes, in_chans, width)


def build(num_classes: int = 1, in_chans: int = 3, **overrides) -> TinySeg:
    """The same network for ``model: tinyseg:build`` (imported without packaging)."""
    return TinySeg(num_classes, in_chans, **overrides)


build.input_size = (64, 64)  # what `package.module:factory` models report as their native size
