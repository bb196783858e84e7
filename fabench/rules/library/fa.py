"""``fa``: feedback alignment with a fixed random B (Lillicrap et al. 2016)."""

from __future__ import annotations

from fabench.rules._base import Rule, register_rule
from fabench.rules._options import FEEDBACK_INIT, FEEDBACK_SCALE, feedback_std


@register_rule
class FeedbackAlignment(Rule):
    """B = B0, drawn once per layer from the layer's ``fa`` stream and held as buffer ``weight``."""

    name = "fa"
    description = "feedback alignment: B = B0, fixed random, scaled like the layer's init [lit, Lillicrap et al. 2016]"
    family = "random"
    kind = "fixed"
    options = (FEEDBACK_SCALE, FEEDBACK_INIT)

    def init_layer(self, layer) -> None:
        layer.add_buffer("weight", layer.draw_normal(feedback_std(layer, self.settings), "fa"))

    def feedback(self, layer, weight, buffers):
        return buffers["weight"]
