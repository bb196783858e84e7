"""``bp``: plain backprop, the reference every rule is measured against."""

from __future__ import annotations

from fabench.rules._base import Rule, register_rule


@register_rule
class Backprop(Rule):
    """B = W_t: layers keep their own forward and backward."""

    name = "bp"
    description = "backprop: B = W_t, the exact gradient [lit]"
    family = "bp"
    exact = True

    def feedback(self, layer, weight, buffers):
        return weight.detach()
