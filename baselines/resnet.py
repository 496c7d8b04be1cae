"""ResNet-34 with torchvision's module and parameter names, written without torchvision.

The module tree reproduces ``torchvision.models.resnet34`` attribute by attribute (``conv1``,
``bn1``, ``relu``, ``maxpool``, ``layer1`` .. ``layer4``, ``avgpool``, ``fc``; inside a block
``conv1``, ``bn1``, ``relu``, ``conv2``, ``bn2`` and, for the first block of a stage that
changes stride or width, ``downsample.0`` (1x1 conv) / ``downsample.1`` (BatchNorm)), so an
ImageNet file such as ``resnet34-333f7ec4.pth`` loads into :func:`resnet34` with
``strict=True``.

TransFuse keeps only the stem and ``layer1`` .. ``layer3``: it replaces ``layer4`` and ``fc`` by
``nn.Identity`` after loading, so neither has any ``state_dict`` entry. ``resnet34(layer4=False,
fc=False)`` builds that trunk directly (the attributes exist and are identities, as in the
reference code).

Initialisation follows torchvision: Kaiming-normal (``fan_out``, ReLU) convolution weights,
BatchNorm weight 1 / bias 0, PyTorch's default ``nn.Linear`` init for ``fc``; no zero-init of
the last BatchNorm of a block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "RESNET34_LAYERS", "ResNet", "resnet34"]

#: BasicBlocks per stage of ResNet-34.
RESNET34_LAYERS: tuple[int, int, int, int] = (3, 4, 6, 3)
#: Output width of each stage (BasicBlock expansion 1).
RESNET_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """A BasicBlock ResNet with torchvision names.

    ``layer4=False`` / ``fc=False`` set those attributes to ``nn.Identity`` (no parameters), which
    is how TransFuse uses the network. ``forward`` is the classification forward of the full
    network (stem, four stages, average pool, flatten, ``fc``); :meth:`forward_stages` returns the
    stage outputs a segmentation model taps.
    """

    def __init__(
        self,
        layers: Sequence[int] = RESNET34_LAYERS,
        num_classes: int = 1000,
        in_chans: int = 3,
        layer4: bool = True,
        fc: bool = True,
    ):
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        self.in_chans = in_chans
        self._width = 64
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(RESNET_WIDTHS[0], layers[0], stride=1)
        self.layer2 = self._make_stage(RESNET_WIDTHS[1], layers[1], stride=2)
        self.layer3 = self._make_stage(RESNET_WIDTHS[2], layers[2], stride=2)
        self.layer4 = self._make_stage(RESNET_WIDTHS[3], layers[3], stride=2) if layer4 else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self._width, num_classes) if fc else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_stage(self, width: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._width != width:
            downsample = nn.Sequential(
                nn.Conv2d(self._width, width, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(width),
            )
        stage = [BasicBlock(self._width, width, stride, downsample)]
        self._width = width
        stage += [BasicBlock(width, width) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> bn1 -> relu -> maxpool (stride 4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1 .. layer3 (and layer4 when present), strides 4, 8, 16 (, 32)."""
        x = self.stem(x)
        outs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            if isinstance(stage, nn.Identity):
                break
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet34(num_classes: int = 1000, in_chans: int = 3, layer4: bool = True, fc: bool = True) -> ResNet:
    """ResNet-34 (21,797,672 parameters with layer4 and a 1000-class fc)."""
    return ResNet(RESNET34_LAYERS, num_classes=num_classes, in_chans=in_chans, layer4=layer4, fc=fc)
