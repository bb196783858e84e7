"""The rule engine: apply a feedback-alignment rule to every Conv2d/Linear of any model.

>>> handle = apply(model, "fa-usf-sn+const", seed=0)
>>> handle.attach_optimizer(optimizer)   # lets +const/+ei/+bm act at each step
>>> handle.remove()                      # plain backprop again

See :func:`apply` for the options, :mod:`fabench.rules._spec` for the rule table and
:mod:`fabench.rules._feedback` for each rule's formula.
"""

from fabench.rules._apply import apply, covered_layers
from fabench.rules._direct import DIRECT_KINDS
from fabench.rules._handle import FeedbackHandle
from fabench.rules._learned import mirror_work, steps_per_training_step
from fabench.rules._options import RuleOptions
from fabench.rules._spec import RuleSpec, list_modifiers, list_rules, parse_rule, rule_family
from fabench.rules._tiles import MEMORY_FORMS, RandomMatrix, parse_feedback_memory, parse_size

__all__ = [
    "DIRECT_KINDS", "MEMORY_FORMS",
    "FeedbackHandle",
    "RandomMatrix",
    "RuleOptions",
    "RuleSpec",
    "apply",
    "covered_layers",
    "list_modifiers",
    "list_rules",
    "mirror_work",
    "parse_feedback_memory",
    "parse_rule",
    "parse_size",
    "rule_family",
    "steps_per_training_step",
]
