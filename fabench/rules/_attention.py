"""``nn.MultiheadAttention``'s output projection: a Linear no rule can act on, refused by name.

``nn.MultiheadAttention`` holds its output projection as an ``nn.Linear`` (``out_proj``) but
never calls that module: its forward hands ``out_proj.weight`` to
``F.multi_head_attention_forward``, which makes the ``F.linear`` call itself. A forward
installed on ``out_proj`` would never run, so the layer would train with exact backprop while
counted as covered (torchvision's ViTs use this module). Catching that inner call would need a
torch-function mode active inside ``multi_head_attention_forward``, whose own torch-function
dispatch then recurses without end; so fabench refuses such a layer, naming it, and the user
excludes it explicitly (it then trains with backprop and is listed among the excluded layers).
The input projection (``in_proj_weight``) is a bare parameter, not a Linear, and no rule
covers it, as for any parameter outside Conv2d/Linear.
"""

from __future__ import annotations

from torch import nn

from fabench.errors import FabenchError


def refuse_uncalled(model: nn.Module, layers: dict[str, nn.Module]) -> None:
    """Raise if a covered layer is an attention module's ``out_proj``, which is never called."""
    projections = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    uncalled = [name for name, module in layers.items() if id(module) in projections]
    if uncalled:
        raise FabenchError(
            f"layer '{uncalled[0]}' is nn.MultiheadAttention's output projection, which MultiheadAttention "
            f"never calls, so no rule can act on it ({len(uncalled)} such layer(s)); exclude them with "
            "--exclude '*.out_proj' (they then train with exact backprop, listed as excluded)")
