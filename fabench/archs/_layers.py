"""Helpers shared by the architecture families: weight initialisation and size arithmetic.

Initialisation (one rule for every fabench architecture, so rules compete on equal footing):
convolutions and hidden linear layers get He/Kaiming normal weights with fan-in and the ReLU
gain (He et al. 2015), which keeps activation variance constant through ReLU stacks; the
final classifier gets the same but with gain 1 (it feeds a softmax, not a ReLU), so initial
logits are O(1). Biases start at zero; BatchNorm starts as the identity (weight 1, bias 0).
Feedback matrices of the learning rules are initialised separately by ``fabench.rules``.
"""

from __future__ import annotations

from torch import nn

from fabench.errors import FabenchError


def init_relu_network(model: nn.Module) -> None:
    """Initialise ``model`` in place as described in the module docstring."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    classifier = linears[-1] if linears else None
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            gain = "linear" if module is classifier else "relu"
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def out_side(side: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Side length after a convolution or pooling window (PyTorch's floor rule)."""
    return (side + 2 * padding - kernel) // stride + 1


def require_side(arch: str, side: int, image_size: int) -> int:
    """Return ``side`` if the feature map is non-empty, else explain the minimum input."""
    if side < 1:
        raise FabenchError(
            f"{arch} cannot take {image_size}x{image_size} inputs (its feature map would be "
            "empty); use a larger --image-size"
        )
    return side
