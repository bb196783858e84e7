"""Rule names, modifiers and the parsing of a rule spec such as ``fa-usf-sn+const+ei``.

A rule decides how a layer's error signal ``δx`` is formed (``δx = Bᵀ δy``); a modifier
changes how the forward weights are updated. Each rule maps to a *feedback kind*: the formula
that turns the forward weight and the layer's fixed buffers into B when backward runs
(see :mod:`fabench.rules._feedback`). Provenance of every rule is in the project README and
in ../shared/reference/RULES.md; ``[2nd]``/``[inf]`` choices are options of :func:`apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabench._registry import Registry
from fabench.errors import FabenchError, unknown_choice


@dataclass(frozen=True)
class RuleDef:
    """A named rule: its feedback kind and a one-line description."""

    name: str
    kind: str
    description: str


@dataclass(frozen=True)
class RuleSpec:
    """A parsed rule spec: a base rule plus modifiers, in the order written."""

    base: RuleDef
    modifiers: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join((self.base.name, *self.modifiers))


RULES: Registry[RuleDef] = Registry("rule")
MODIFIERS: dict[str, str] = {
    "const": "forward weight norm held at its initial value every step (W <- W·‖W0‖/‖W‖) [2nd]",
    "ei": "fixed excitatory/inhibitory signs: no weight ever changes sign; feedback uses the fixed signs [2nd]",
    "bm": "Batch Manhattan: the optimizer sees sign(∂L/∂W) instead of the gradient [lit, Liao et al. 2016]",
}


def _define(name: str, kind: str, description: str) -> None:
    RULES.register(name, RuleDef(name, kind, description))


_define("bp", "bp", "backprop: B = W_t, the exact gradient [lit]")
_define("fa", "fixed", "feedback alignment: B = B0, fixed random, scaled like the layer's init [lit, Lillicrap et al. 2016]")
_define("fa-usf", "usf", "uniform sign-concordant feedback: B = s·sign(W_t), s a fixed per-layer scale [lit, Liao et al. 2016]")
_define("fa-usf-init", "magnitude", "sign-concordant with fixed random magnitudes: B = |B0| ⊙ sign(W_t) (the paper's 'Init.') [2nd]")
_define("fa-usf-sn", "sn", "sign-concordant, norm-matched: B = sign(W_t)·‖W_t‖/‖sign(W_t)‖ (the paper's 'SN') [2nd]")
_define("fa-frsf", "magnitude", "fixed random-magnitude sign-concordant feedback: B = |M| ⊙ sign(W_t) [lit, Liao et al. 2016]")
_define("fa-brsf", "brsf", "batchwise random-magnitude sign-concordant: B = |M_t| ⊙ sign(W_t), M_t redrawn every step [lit, Liao et al. 2016]")
_define("dfa", "dfa", "direct feedback alignment: each layer's δx = D_l e, e = ∂L/∂logits, D_l fixed random [lit, Nøkland 2016]")
_define("dfa-conv", "dfa-conv", "DFA whose conv feedback is a random [classes × C_in × k × k] kernel shared across positions (BioTorch's DFA) [2nd]")
_define("dfa-wht", "dfa-wht", "DFA through a structured random matrix: fixed random signs, then a fast Walsh-Hadamard transform; d_in numbers per layer [own]")
_define("kp", "kp", "Kolen-Pollack: B starts as fa's draw and gets W's update and its own weight decay each step, so B and W converge [lit, Akrout et al. 2019]")
_define("wm", "wm", "weight mirror: B starts as fa's draw; after each step a mirror phase moves it toward the layer's response to noise, an estimate of W [lit, Akrout et al. 2019]")
_define("dense-fa", "dense", "FA whose conv feedback is a dense fixed random [d_out × d_in] matrix, no weight sharing [inf]")


#: The family of each feedback kind: what kind of feedback reaches the hidden layers. Training
#: recipes (fabench.train.recipes) differ by family, never by rule name.
FAMILIES = {"bp": "bp", "fixed": "random", "dense": "random", "usf": "sign", "magnitude": "sign", "sn": "sign",
            "brsf": "sign", "dfa": "direct", "dfa-conv": "direct", "dfa-wht": "direct", "kp": "learned", "wm": "learned"}


def rule_family(spec: str) -> str:
    """``bp``, ``sign`` (sign-concordant), ``random`` (fixed random B), ``direct`` (DFA) or ``learned``."""
    return FAMILIES[parse_rule(spec).base.kind]


def list_rules(pattern: str = "*") -> dict[str, str]:
    """Rule names matching an fnmatch ``pattern``, each with its one-line description."""
    return {name: RULES.get(name).description for name in RULES.names(pattern)}


def list_modifiers() -> dict[str, str]:
    """Modifier names (written after ``+``) with their one-line descriptions."""
    return dict(MODIFIERS)


def parse_rule(spec: str) -> RuleSpec:
    """Parse ``base[+modifier...]``; unknown or repeated parts raise a one-line error."""
    if not isinstance(spec, str) or not spec.strip():
        raise FabenchError(f"a rule is needed, e.g. fa-usf-sn+const; valid rules: {', '.join(RULES)}")
    base_name, *mods = spec.strip().split("+")
    base = RULES.get(base_name)
    for mod in mods:
        if mod not in MODIFIERS:
            raise unknown_choice("rule modifier", f"+{mod}", [f"+{m}" for m in MODIFIERS])
    if len(set(mods)) != len(mods):
        raise FabenchError(f"rule '{spec}' repeats a modifier; give each of {', '.join('+' + m for m in MODIFIERS)} at most once")
    return RuleSpec(base, tuple(mods))
