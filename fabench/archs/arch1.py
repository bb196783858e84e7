"""``arch1``: "Architecture 1", the small CIFAR-10 network of the paper's CIFAR experiment.

Layers (docs/rules.md, "Architectures tied to the paper"): conv 5×5 C→64, ReLU, max-pool 2; conv 5×5 64→64, ReLU,
max-pool 2; fc 576→384, ReLU; fc 384→192, ReLU; fc 192→classes. Inputs are 24×24 crops of
the 32×32 images (``default_image_size`` gives 24; the ``crop24`` augmentation makes them).

Padding: both convolutions are *valid* (no padding) and the pools are 2×2 with stride 2:
24 →conv→ 20 →pool→ 10 →conv→ 6 →pool→ 3, so the flatten is 64·3·3 = 576 as in the paper.
"Same" padding would give 64·6·6 = 2304 instead, so valid convolutions are the only reading
consistent with the stated fc size. At other input sizes the first fc layer's width follows
the input (e.g. 28×28 MNIST: 64·4·4 = 1024) and the rest is unchanged.

ReLUs are not in-place so that backward hooks installed by learning rules see unmodified
layer outputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from fabench.archs._layers import init_relu_network, out_side, require_side
from fabench.archs._registry import register_arch


def _feature_side(image_size: int) -> int:
    side = out_side(image_size, 5)  # conv1, valid
    side = out_side(side, 2, 2)  # pool1
    side = out_side(side, 5)  # conv2, valid
    return out_side(side, 2, 2)  # pool2


class Arch1(nn.Module):
    """Two valid 5×5 conv layers with 2×2 pooling, then three fully connected layers."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, image_size: int = 24) -> None:
        super().__init__()
        side = require_side("arch1", _feature_side(image_size), image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 384),
            nn.ReLU(),
            nn.Linear(384, 192),
            nn.ReLU(),
            nn.Linear(192, num_classes),
        )
        init_relu_network(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_arch(
    "arch1",
    "paper's CIFAR Architecture 1: 2 valid conv5x5 (64) + pool, fc 576-384-192-classes; 24x24 input",
    image_size=24,
    cpu_amp="bf16",
    cpu_channels_last=True,
    cpu_measured="arch1 measured 2.57x as fast as fp32 NCHW, docs/benchmarks.md",
)
def arch1(num_classes: int, in_chans: int = 3, image_size: int | None = None) -> Arch1:
    return Arch1(num_classes, in_chans, image_size or 24)
