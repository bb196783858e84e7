"""``alexnet``: AlexNet (Krizhevsky et al. 2012) at CIFAR resolution and at ImageNet's.

One name, two layouts chosen by the input size, because AlexNet's 11×11 stride-4 stem and
three overlapping 3×3/2 pools reduce a 32×32 image to nothing:

* ``image_size`` < 128 or None (CIFAR 32×32, MNIST 28×28; the default): CIFAR-adapted
  AlexNet. Same five conv layers and widths as the ImageNet model (64-192-384-256-256), same
  overlapping 3×3/2 max-pools after conv1, conv2 and conv5, but a 5×5 stride-1 stem with
  padding 2: 32 → 15 → 7 → 3. Then adaptive average pooling to 3×3 (a no-op at 32×32; it
  lets other small sizes work), and the classifier dropout-fc 2304→1024, ReLU,
  dropout-fc 1024→1024, ReLU, fc→classes. The hidden width is 1024 rather than 4096 because
  4096-wide layers would put 26 M parameters on a 3×3×256 input.
* ``image_size`` ≥ 128 (ImageNet 224): the torchvision layout of AlexNet (the "one weird trick"
  variant without local response normalisation): conv 11×11/4 (64), pool, conv 5×5 (192),
  pool, conv 3×3 (384, 256, 256), pool, adaptive average pool to 6×6, dropout-fc 9216→4096,
  dropout-fc 4096→4096, fc→classes.

Dropout p = 0.5 in both, as in AlexNet. ``tv:alexnet`` gives torchvision's own model instead.
Weights: see ``fabench.archs._layers``. ReLUs are not in-place (rule hooks).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from fabench.archs._layers import init_relu_network, out_side, require_side
from fabench.archs._registry import register_arch

#: Inputs at least this large get the ImageNet layout.
IMAGENET_LAYOUT_FROM = 128


@dataclass(frozen=True)
class AlexNetLayout:
    stem_kernel: int
    stem_stride: int
    stem_padding: int
    pooled_side: int
    hidden: int


CIFAR_LAYOUT = AlexNetLayout(
    stem_kernel=5, stem_stride=1, stem_padding=2, pooled_side=3, hidden=1024
)
IMAGENET_LAYOUT = AlexNetLayout(
    stem_kernel=11, stem_stride=4, stem_padding=2, pooled_side=6, hidden=4096
)


def _last_side(layout: AlexNetLayout, image_size: int) -> int:
    """Side of conv5's pooled output; checks that the input is large enough."""
    side = out_side(image_size, layout.stem_kernel, layout.stem_stride, layout.stem_padding)
    for _ in range(3):  # the three 3×3/2 pools; the convs between them keep the size
        side = out_side(side, 3, 2)
    return side


class AlexNet(nn.Module):
    """Five conv layers with three overlapping pools, then a three-layer classifier."""

    def __init__(
        self, layout: AlexNetLayout, num_classes: int = 10, in_chans: int = 3, image_size: int = 32
    ) -> None:
        super().__init__()
        require_side("alexnet", _last_side(layout, image_size), image_size)
        stem = nn.Conv2d(
            in_chans, 64, layout.stem_kernel, layout.stem_stride, padding=layout.stem_padding
        )
        self.features = nn.Sequential(
            stem,
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(layout.pooled_side)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(256 * layout.pooled_side**2, layout.hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(layout.hidden, layout.hidden),
            nn.ReLU(),
            nn.Linear(layout.hidden, num_classes),
        )
        init_relu_network(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def layout_for(image_size: int | None) -> AlexNetLayout:
    """The layout ``alexnet`` uses at ``image_size`` (None: CIFAR's 32)."""
    if image_size is not None and image_size >= IMAGENET_LAYOUT_FROM:
        return IMAGENET_LAYOUT
    return CIFAR_LAYOUT


@register_arch(
    "alexnet",
    "AlexNet: CIFAR-adapted (5x5 stem, fc 1024) below 128 px, torchvision layout (fc 4096) above",
)
def alexnet(num_classes: int, in_chans: int = 3, image_size: int | None = None) -> AlexNet:
    return AlexNet(layout_for(image_size), num_classes, in_chans, image_size or 32)
