"""The direct rules: each layer's δx from its own fixed random matrix (:mod:`fabench.rules._direct`)."""

from __future__ import annotations

from fabench.rules._base import register_rule
from fabench.rules._direct import DenseDFA, DenseFA, DirectRule, HadamardDFA, StructuredDFA


@register_rule
class DirectFeedbackAlignment(DirectRule):
    """δx = D_l e with a dense D_l ``[d_in, classes]`` per layer."""

    name = "dfa"
    description = ("direct feedback alignment: each layer's δx = D_l e, e = ∂L/∂logits, D_l fixed random "
                   "[lit, Nøkland 2016]")
    conv_feedback = linear_feedback = DenseDFA


@register_rule
class ConvDirectFeedbackAlignment(DirectRule):
    """A conv's D is a kernel shared across positions; Linear layers get dfa's dense matrices."""

    name = "dfa-conv"
    description = ("DFA whose conv feedback is a random [classes × C_in × k × k] kernel shared across positions "
                   "(BioTorch's DFA) [2nd]")
    conv_feedback, linear_feedback = StructuredDFA, DenseDFA


@register_rule
class HadamardDirectFeedbackAlignment(DirectRule):
    """D = random signs then a fast Walsh–Hadamard transform: d_in numbers per layer."""

    name = "dfa-wht"
    description = ("DFA through a structured random matrix: fixed random signs, then a fast Walsh-Hadamard "
                   "transform; d_in numbers per layer [own]")
    conv_feedback = linear_feedback = HadamardDFA


@register_rule
class DenseFeedbackAlignment(DirectRule):
    """A conv's B is a dense ``[d_out, d_in]`` matrix over the flattened maps; Linear layers are fa."""

    name = "dense-fa"
    description = "FA whose conv feedback is a dense fixed random [d_out × d_in] matrix, no weight sharing [inf]"
    family = "random"
    kind = "dense"
    conv_feedback, linear_feedback = DenseFA, None
