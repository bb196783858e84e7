"""``mlp``: a fully connected network, for the classic feedback-alignment experiments.

Flatten the image, then ``hidden`` Linear layers (default one of 500 units), each followed by
the activation (``relu`` by default; ``sigmoid`` as in the public code of Akrout et al. 2019,
which used one hidden layer of 500 units for MNIST and 1000 for CIFAR-10, and ``tanh``), then a
Linear layer to the classes. Options come through ``--arch-option``: ``hidden=500`` or
``hidden=1000,500``, ``activation=sigmoid``. Initialisation as every fabench net
(``init_relu_network``); ``--weight-init`` replaces it.
"""

from __future__ import annotations

from torch import Tensor, nn

from fabench.archs._layers import init_relu_network
from fabench.archs._registry import register_arch
from fabench.errors import FabenchError

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _hidden_sizes(hidden) -> tuple[int, ...]:
    """``500``, ``"1000,500"``, ``[1000, 500]`` or ``()`` -> a tuple of positive widths."""
    if isinstance(hidden, str):
        parts = [p.strip() for p in hidden.split(",") if p.strip()]
        hidden = parts
    sizes = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    try:
        sizes = tuple(int(size) for size in sizes)
    except (TypeError, ValueError):
        raise FabenchError(f"mlp option hidden takes widths such as 500 or 1000,500, got {hidden!r}") from None
    if any(size < 1 for size in sizes):
        raise FabenchError(f"mlp hidden widths must be positive, got {sizes}")
    return sizes


class MLP(nn.Module):
    """Flatten, hidden Linear + activation layers, Linear to the classes."""

    def __init__(self, num_classes: int, in_features: int, hidden: tuple[int, ...], activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise FabenchError(f"mlp option activation must be one of {', '.join(ACTIVATIONS)}, got '{activation}'")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        init_relu_network(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_arch("mlp", "fully connected: hidden=500 (or e.g. 1000,500), activation=relu|sigmoid|tanh (--arch-option)")
def mlp(num_classes: int, in_chans: int = 1, image_size: int | None = None, hidden=500,
        activation: str = "relu") -> MLP:
    side = image_size or (28 if in_chans == 1 else 32)
    return MLP(num_classes, in_chans * side * side, _hidden_sizes(hidden), activation)
