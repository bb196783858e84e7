"""The rule engine and its public API: apply a learning rule to every Conv2d/Linear of any model,
and write your own rules (docs/writing-rules.md).

>>> handle = apply(model, "fa-usf-sn+const", seed=0)
>>> handle.attach_optimizer(optimizer)      # modifiers and learned feedback act at each step
>>> handle.begin_training(steps_per_epoch)  # before the first step of a fresh run
>>> handle.end_epoch()                      # after each epoch
>>> handle.remove()                         # plain backprop again

A rule is a :class:`Rule` subclass registered with :func:`register_rule`; a modifier a
:class:`Modifier` subclass. :func:`load_plugins` imports rules from files or modules.
"""

from fabench.rules._apply import apply, covered_layers
from fabench.rules._base import FAMILIES, Modifier, Option, Rule, register_rule
from fabench.rules._direct import DirectRule, LayerFeedback
from fabench.rules._handle import FeedbackHandle
from fabench.rules._identity import plugin_identity
from fabench.rules._layers import RuleLayer, feedback_signs
from fabench.rules._learned import mirror_work
from fabench.rules._options import RuleOptions, check_rule_options, feedback_std
from fabench.rules._plugins import absolute_plugins, load_plugins
from fabench.rules._spec import (
    RuleSpec,
    list_modifiers,
    list_rules,
    parse_rule,
    rule_class,
    rule_family,
)
from fabench.rules._tiles import MEMORY_FORMS, RandomMatrix, parse_feedback_memory, parse_size
from fabench.rules.library import import_all as _import_builtins

_import_builtins()

__all__ = [
    "FAMILIES", "MEMORY_FORMS",
    "DirectRule",
    "FeedbackHandle",
    "LayerFeedback",
    "Modifier",
    "Option",
    "RandomMatrix",
    "Rule",
    "RuleLayer",
    "RuleOptions",
    "RuleSpec",
    "absolute_plugins",
    "apply",
    "check_rule_options",
    "covered_layers",
    "feedback_signs",
    "feedback_std",
    "list_modifiers",
    "list_rules",
    "load_plugins",
    "mirror_work",
    "parse_feedback_memory",
    "parse_rule",
    "parse_size",
    "plugin_identity",
    "register_rule",
    "rule_class",
    "rule_family",
]
