"""``lenet``: LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for MNIST and CIFAR.

Layers: conv 5×5 C→6, ReLU, max-pool 2; conv 5×5 6→16, ReLU, max-pool 2; fc 16·s·s→120, ReLU;
fc 120→84, ReLU; fc 84→classes. ReLU and max-pooling replace the original's scaled tanh and
trainable subsampling, as in modern LeNet baselines (BioTorch's included).

Variants, chosen from ``in_chans`` and ``image_size``:

* MNIST, 1×28×28: LeNet-5 was defined on 32×32 inputs (digits padded by 2), so at sizes below
  32 the first convolution pads by 2. Feature maps 28 → 28 → 14 → 10 → 5, flatten 400.
* MNIST padded to 32×32 (``--image-size 32``) and CIFAR, 3×32×32: no padding,
  32 → 28 → 14 → 10 → 5, flatten 400 as in the original.
* Any other size: same rule, the flatten width is computed from the size.

``image_size=None`` means the native size of the matching dataset: 28 for one channel,
32 otherwise.
"""

from __future__ import annotations

from torch import Tensor, nn

from fabench.archs._layers import init_relu_network, out_side, require_side
from fabench.archs._registry import register_arch


def _conv1_padding(image_size: int) -> int:
    # pad small inputs (MNIST's 28) to LeNet-5's designed 32×32 field
    return 2 if image_size < 32 else 0


def _feature_side(image_size: int) -> int:
    side = out_side(image_size, 5, padding=_conv1_padding(image_size))
    side = out_side(side, 2, 2)
    side = out_side(side, 5)
    return out_side(side, 2, 2)


class LeNet5(nn.Module):
    """LeNet-5 layout; the flatten size follows the input size."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> None:
        super().__init__()
        side = require_side("lenet", _feature_side(image_size), image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5, padding=_conv1_padding(image_size)),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
        init_relu_network(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_arch(
    "lenet", "LeNet-5 (ReLU, max-pool): conv 6, conv 16, fc 120-84; MNIST 28/32 or CIFAR 32"
)
def lenet(num_classes: int, in_chans: int = 1, image_size: int | None = None) -> LeNet5:
    native = 28 if in_chans == 1 else 32
    return LeNet5(num_classes, in_chans, image_size or native)


class BioTorchLeNet(nn.Module):
    """BioTorch's CIFAR "LeNet" (``le_net_cifar``), the net behind its published CIFAR-10 LeNet row.

    Not LeNet-5: conv 3×3 C→32, ReLU, max-pool 2; conv 3×3 32→64, ReLU, max-pool 2; conv 3×3
    64→128, ReLU; global average pool; fc 128→256, ReLU; fc 256→classes. Layer sizes as in
    jsalbert/biotorch ``biotorch/models/le_net.py`` (facts only; written anew here).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, image_size: int = 32) -> None:
        super().__init__()
        side = out_side(out_side(out_side(out_side(image_size, 3), 2, 2), 3), 2, 2)
        require_side("lenet-biotorch", out_side(side, 3), image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=3), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, num_classes),
        )
        init_relu_network(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_arch(
    "lenet-biotorch", "BioTorch's CIFAR 'LeNet': conv3x3 32-64-128 + global avg pool, fc 256; 32 px"
)
def lenet_biotorch(num_classes: int, in_chans: int = 3, image_size: int | None = None) -> BioTorchLeNet:
    return BioTorchLeNet(num_classes, in_chans, image_size or 32)
