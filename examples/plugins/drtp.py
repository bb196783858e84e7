"""Direct Random Target Projection (``drtp``): hidden layers learn from the target, not the error.

Frenkel, Lefebvre & Bol, "Learning Without Feedback: Fixed Random Learning Signals Allow for
Feedforward Training of Deep Neural Networks", Frontiers in Neuroscience 15:629892 (2021).
DRTP is DFA with the output error ``e`` replaced by the one-hot target ``y*`` (with a minus
sign: for the target class ``e`` is always negative, so ``−y*`` is a sign-correct surrogate of
``e``): every hidden layer receives ``D_l (−y*)`` through a fixed random matrix, so its update
needs no error from the output at all. The output layer learns from its true error, as in DFA.

Here ``y*`` is read off the error itself: under softmax cross-entropy without label smoothing,
``e = (softmax(z) − y*) / batch`` is negative at the target class only, so the target is each
row's smallest entry. The signal keeps ``e``'s ``1 / batch`` so the step size matches DFA's::

    fabench run --plugin examples/plugins/drtp.py --rule drtp --arch mlp --dataset mnist-mini
"""

from __future__ import annotations

import torch

from fabench.rules import register_rule, rule_class


@register_rule
class DirectRandomTargetProjection(rule_class("dfa")):
    """dfa's matrices and engine; the layers multiply ``−y* / batch`` instead of ``e``."""

    name = "drtp"
    description = ("direct random target projection: each layer's δx = D_l (−y*), the one-hot target through a "
                   "fixed random matrix [lit, Frenkel et al. 2021]")

    def output_signal(self, error: torch.Tensor) -> torch.Tensor:
        target = error.argmin(dim=1)
        signal = torch.zeros_like(error)
        signal[torch.arange(error.shape[0], device=error.device), target] = -1.0 / error.shape[0]
        return signal
