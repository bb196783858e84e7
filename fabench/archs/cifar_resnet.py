"""CIFAR ResNets of He et al. 2016 (sec. 4.2): ``resnet20/32/44/56/110``, depth 6n+2.

Layout: conv 3×3 C→16, BN, ReLU; three stages of n basic blocks with 16, 32, 64 channels
(stride 2 at the start of stages 2 and 3); global average pooling; fc 64→classes. A basic
block is conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU.

Shortcuts: option A by default, the parameter-free one He et al. used for CIFAR-10: where the
shape changes the shortcut takes every second pixel and appends zero channels. Why A:

* it is the network whose numbers are published (ResNet-20 has 0.27 M parameters, ResNet-56
  0.85 M, ResNet-110 1.7 M), so results compare with the literature;
* shortcuts carry no weights, so every trained layer sits on a residual branch and receives
  its error signal through the learning rule under test; option B would add three 1×1
  projection layers that the rule must also train, a confound between rules.

Option B (1×1 conv + BN projections where the shape changes) is available as
``create_model("resnet20", ..., shortcut="b")``. Weights: see ``fabench.archs._layers``.
ReLUs are separate, non-in-place modules so rule hooks see unmodified outputs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fabench.archs._layers import init_relu_network
from fabench.archs._registry import register_arch
from fabench.errors import FabenchError

STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("a", "b")


class ZeroPadShortcut(nn.Module):
    """Option A: identity with spatial subsampling and zero channels appended (no weights)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Option B: a 1×1 strided convolution and BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _shortcut(in_channels: int, out_channels: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "a":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return _projection(in_channels, out_channels, stride)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers on the residual branch, added to the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride, shortcut)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth 6n+2 for small images (any size; global pooling before the fc)."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_chans: int = 3, shortcut: str = "a"
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise FabenchError(
                f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}"
            )
        if shortcut not in SHORTCUTS:
            raise FabenchError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got '{shortcut}'")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU()
        stages, width = [], STAGE_WIDTHS[0]
        for index, out_width in enumerate(STAGE_WIDTHS):
            first_stride = 1 if index == 0 else 2
            blocks = []
            for block in range(blocks_per_stage):
                stride = first_stride if block == 0 else 1
                blocks.append(BasicBlock(width, out_width, stride, shortcut))
                width = out_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, num_classes)
        init_relu_network(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _register_depth(depth: int, params: str) -> None:
    def build(
        num_classes: int, in_chans: int = 3, image_size: int | None = None, shortcut: str = "a"
    ) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans, shortcut)

    register_arch(
        f"resnet{depth}",
        f"CIFAR ResNet-{depth} (He et al. 2016), 16/32/64 channels, option-A shortcuts, {params}",
        cpu_amp="bf16",
        cpu_channels_last=True,
        cpu_measured="CIFAR ResNets measured 1.94x as fast as fp32 NCHW (resnet20), docs/benchmarks.md",
    )(build)


for _depth, _params in ((20, "0.27M"), (32, "0.46M"), (44, "0.66M"), (56, "0.85M"), (110, "1.7M")):
    _register_depth(_depth, f"{_params} params")
