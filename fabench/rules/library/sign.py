"""The sign-concordant rules: B has the signs of W_t (or the fixed signs of ``+ei``).

Liao, Leibo & Poggio 2016 (uSF, frSF, brSF); the paper's 'Init.' and 'SN' variants as read by
Lance & Kieu 2026. Each B is formed inside backward and freed after use.
"""

from __future__ import annotations

import torch

from fabench.rules import _feedback
from fabench.rules._base import Option, Rule, register_rule
from fabench.rules._layers import feedback_signs
from fabench.rules._options import FEEDBACK_INIT, FEEDBACK_SCALE, feedback_std
from fabench.setting_values import SN_NORMS


@register_rule
class UniformSignFeedback(Rule):
    """B = s · sign(W), ``s`` a per-layer scalar (buffer ``scale``), Xiao et al.'s fan-out std by default."""

    name = "fa-usf"
    description = "uniform sign-concordant feedback: B = s·sign(W_t), s a fixed per-layer scale [lit, Liao et al. 2016]"
    family = "sign"
    kind = "usf"
    options = (FEEDBACK_SCALE, FEEDBACK_INIT)

    def init_layer(self, layer) -> None:
        weight = layer.weight.detach()
        std = feedback_std(layer, self.settings, default="xiao")
        layer.add_buffer("scale", torch.tensor(std, dtype=weight.dtype, device=weight.device))

    def feedback(self, layer, weight, buffers):
        return feedback_signs(weight, buffers).mul_(buffers["scale"])


@register_rule
class FixedMagnitudeSignFeedback(Rule):
    """B = |M| ⊙ sign(W), ``|M|`` drawn once (buffer ``magnitude``)."""

    name = "fa-frsf"
    description = "fixed random-magnitude sign-concordant feedback: B = |M| ⊙ sign(W_t) [lit, Liao et al. 2016]"
    family = "sign"
    kind = "magnitude"
    options = (FEEDBACK_SCALE, FEEDBACK_INIT)
    #: the stream |M| is drawn from
    purpose = "fa-frsf"

    def init_layer(self, layer) -> None:
        layer.add_buffer("magnitude", layer.draw_normal(feedback_std(layer, self.settings), self.purpose).abs())

    def feedback(self, layer, weight, buffers):
        return feedback_signs(weight, buffers).mul_(buffers["magnitude"])


@register_rule
class InitMagnitudeSignFeedback(FixedMagnitudeSignFeedback):
    """fa-frsf's formula with fa's own draw as |B0| (the paper's 'Init.')."""

    name = "fa-usf-init"
    description = "sign-concordant with fixed random magnitudes: B = |B0| ⊙ sign(W_t) (the paper's 'Init.') [2nd]"
    kind = "magnitude"
    purpose = "fa"


@register_rule
class BatchwiseSignFeedback(Rule):
    """B = |M_t| ⊙ sign(W), M_t ~ N(0, s²) redrawn at every backward from torch's global generator
    (so resuming from a checkpoint that saved RNG states redraws the same M_t)."""

    name = "fa-brsf"
    description = ("batchwise random-magnitude sign-concordant: B = |M_t| ⊙ sign(W_t), M_t redrawn every step "
                   "[lit, Liao et al. 2016]")
    family = "sign"
    kind = "brsf"
    options = (FEEDBACK_SCALE, FEEDBACK_INIT)

    def init_layer(self, layer) -> None:
        weight = layer.weight.detach()
        std = feedback_std(layer, self.settings)
        layer.add_buffer("scale", torch.tensor(std, dtype=weight.dtype, device=weight.device))

    def feedback(self, layer, weight, buffers):
        fixed = buffers.get("sign")
        return _feedback.draw_magnitudes(weight, buffers["scale"]).mul_(torch.sign(weight) if fixed is None else fixed)

    def step_work(self, layer, needs_dx):
        return [], float(layer.weight.numel()) if needs_dx else 0.0


def _spectral_norm(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(matrix.reshape(matrix.shape[0], -1).float(), ord=2).to(matrix.dtype)



@register_rule
class NormMatchedSignFeedback(Rule):
    """B = sign(W) · ‖W‖ / ‖sign(W)‖: ``fro`` the flattened L2 norm (Lance & Kieu's code), ``spectral``
    the largest singular value of the weight viewed as ``[C_out, rest]`` (their text)."""

    name = "fa-usf-sn"
    description = "sign-concordant, norm-matched: B = sign(W_t)·‖W_t‖/‖sign(W_t)‖ (the paper's 'SN') [2nd]"
    family = "sign"
    kind = "sn"
    options = (Option("sn_norm", "fro", "norm matched between B and W: fro (flattened L2) or spectral",
                      choices=SN_NORMS, label="feedback sn_norm"),)

    def feedback(self, layer, weight, buffers):
        sign = feedback_signs(weight, buffers)
        if self.settings.sn_norm == "spectral":
            return sign.mul_(_spectral_norm(weight) / _spectral_norm(sign).clamp_min(1e-12))
        return sign.mul_(torch.linalg.vector_norm(weight) / torch.linalg.vector_norm(sign).clamp_min(1e-12))
