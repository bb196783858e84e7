"""Default training recipes: the one place that says how each architecture trains under each rule family.

A run's optimizer, learning rate, momentum, weight decay and forward-weight init may be left
unset (``None`` in :class:`RunConfig`). :func:`resolve` fills each unset field, in this order:

1. the recipe's setting for the rule itself (its class's ``recipe``: what a rule's mechanism
   needs, such as Kolen–Pollack's weight decay);
2. the matching recipe's setting for the rule's *family* (``bp``, ``sign``: sign-concordant
   feedback, ``random``: fixed random feedback, ``direct``: DFA, ``learned``: learned feedback);
3. the recipe's setting for every rule;
4. the optimizer's own defaults (:data:`OPTIMIZER_DEFAULTS`);
5. :data:`FALLBACK` (Adam, the architecture's own init).

Optimizer-specific values (``lr``, ``momentum``, ``weight_decay``) of a recipe are used only
when the run's optimizer is the recipe's: a user who picks ``--optimizer sgd`` on a recipe made
for Adam gets SGD's defaults, never Adam's learning rate. Whatever the user (or a task file)
sets is kept as given. The resolved config is what ``run_id`` hashes, so giving a value
explicitly or getting it from the recipe is the same run.

Why the families differ (docs/reproductions.md, "What makes plain FA learn", from ``tasks/fa-stability.yaml``):
on networks without normalisation layers, fixed random feedback (``fa``, ``dense-fa``) and DFA
move the hidden weights along directions set by B before the output layer has aligned with
them; from full-size (Kaiming) forward weights that blows the logits up (training loss 7-13 on
arch1, far above ln 10). Starting those forward weights at 0.1x their scale lets the output
layers align with B before the hidden layers' changes can reach the logits, as Lillicrap et
al. 2016 started FA networks from small weights (BioTorch reaches stability the other way, with
a 10-100x smaller SGD learning rate for FA and DFA, which at CPU scale learns far more slowly).
Rules that learn their feedback (kp, wm) start from fa's random B, so they start like fa and get
fa's small init. Backprop and the sign-concordant rules train best from the architecture's own
init, and keep it;
the optimizer and learning rate are the same for every family, except where a rule's mechanism
needs its own (``kp``: weight decay on W and B, which is what brings B to W).

Recipes are priors: ``fabench tune`` starts each cell's search from them (its first trial) and
searches around them with the same budget for every rule.

Precision and memory layout are resolved here too (:func:`decide_precision`): ``--amp auto`` and
an unset ``--channels-last`` become what the architecture declares for CPUs with native bfloat16
(``cpu_amp``, ``cpu_channels_last`` of its registration; arch1 and the CIFAR ResNets: bf16
autocast and channels_last, measured faster, docs/benchmarks.md) when the run is on such a CPU,
and fp32 NCHW everywhere else (other architectures, other CPUs, CUDA). A grid decides once, where
it computes its cells' run ids (:func:`pin_precision`), and its workers run what it decided.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

#: Fields a recipe may fill; RunConfig leaves them None until resolved.
RECIPE_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "weight_init", "weight_init_scale")
#: Of those, the ones whose meaning depends on the optimizer.
OPTIMIZER_FIELDS = ("lr", "momentum", "weight_decay")

#: Per-optimizer defaults for values nobody set (SGD's are a common CIFAR recipe).
OPTIMIZER_DEFAULTS = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-2},
}
#: What a field gets when neither the user, a recipe nor the optimizer sets it.
FALLBACK = {"optimizer": "adam", "weight_init": "default", "weight_init_scale": 1.0}
RECIPE_CHOICES = ("auto", "none")


@dataclass(frozen=True)
class Recipe:
    """Settings for a group of architectures, with per-family changes and their source."""

    name: str
    archs: tuple[str, ...]
    settings: dict
    by_family: dict = field(default_factory=dict)
    source: str = ""

    def matches(self, arch: str) -> bool:
        bare = arch.split(":", 1)[1] if arch.startswith("fabench:") else arch
        return any(fnmatch.fnmatchcase(bare, pattern) for pattern in self.archs)

    def for_family(self, family: str, rule: str = "") -> dict:
        return {**self.settings, **self.by_family.get(family, {}), **rule_settings(rule)}


def rule_settings(rule: str) -> dict:
    """Settings rule ``rule``'s own mechanism needs under every recipe: its class's ``recipe``
    (Kolen–Pollack's AdamW with weight decay, fabench.rules.library.learned). {} for no rule."""
    if not rule:
        return {}
    from fabench.rules import parse_rule

    return dict(parse_rule(rule).base.recipe)


#: Random feedback, DFA and learned feedback start from forward weights at 0.1x their init (docs/reproductions.md, "Recipes").
_SMALL_FORWARD = {family: {"weight_init_scale": 0.1} for family in ("random", "direct", "learned")}

RECIPES = (
    Recipe(
        "small-cnn", ("arch1", "lenet", "lenet-biotorch", "mlp"),
        {"optimizer": "adam", "lr": 1e-3},
        _SMALL_FORWARD,
        "Adam 1e-3 as Lance & Kieu 2026 train arch1; random feedback and DFA start from 0.1x "
        "forward weights (tasks/fa-stability.yaml)",
    ),
    Recipe(
        "alexnet", ("alexnet",),
        {"optimizer": "adam", "lr": 1e-3, "weight_init": "xavier-uniform"},
        _SMALL_FORWARD,
        "as small-cnn, from Xavier-uniform forward weights (BioTorch's init): from its own Kaiming init the "
        "BN-free AlexNet starts at 1.6x ln(10) and Adam blows it up further (docs/reproductions.md, Recipes)",
    ),
    Recipe(
        "cifar-resnet", ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
        {"optimizer": "adam", "lr": 1e-3},
        _SMALL_FORWARD,
        "Adam 1e-3 as BioTorch's Adam configs; random feedback and DFA as small-cnn "
        "(tasks/fa-stability.yaml)",
    ),
)


@dataclass(frozen=True)
class Precision:
    """What a run computes in (``amp``: off, bf16 or fp16), whether in channels_last, and why."""

    amp: str
    channels_last: bool
    reason: str

    def header(self) -> str:
        """``precision: bf16 autocast, channels_last (auto: ...)`` for the run header."""
        kind = {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.amp]
        return f"precision: {kind}{', channels_last' if self.channels_last else ''} ({self.reason})"


def _auto_precision(arch: str, device: str) -> tuple[str, bool, str]:
    """``(amp, channels_last, why)`` for a run that leaves both to fabench: the architecture's
    declared CPU choice on a CPU with native bf16, else fp32 NCHW."""
    from fabench.archs import ARCHS, split_source
    from fabench.train import device as machine

    if not machine.runs_on_cpu(device):
        return "off", False, "fp32 on CUDA, where bf16 is not measured yet"
    if not machine.cpu_has_native_bf16():
        return "off", False, "this CPU has no native bf16"
    forced, bare = split_source(arch)
    spec = ARCHS.get(bare) if forced in (None, "fabench") and bare in ARCHS else None
    if spec is None or (spec.cpu_amp, spec.cpu_channels_last) == ("off", False):
        return "off", False, f"{arch} keeps fp32 on CPU"
    return spec.cpu_amp, spec.cpu_channels_last, f"CPU with native bf16; {spec.cpu_measured}"


def _given(config) -> str:
    """The options that set the precision and layout, as typed: ``--amp off --no-channels-last``."""
    flags = [] if config.amp == "auto" else [f"--amp {config.amp}"]
    if config.channels_last is not None:
        flags.append("--channels-last" if config.channels_last else "--no-channels-last")
    return " ".join(flags)


def decide_precision(config) -> Precision:
    """The run's precision and layout: as given, else by :func:`_auto_precision` for the run's
    device. A config decided elsewhere (:func:`pin_precision`) keeps its decision and reason."""
    from fabench.rules import absolute_plugins, load_plugins

    auto_amp, auto_layout = config.amp == "auto", config.channels_last is None
    if not (auto_amp or auto_layout):
        return Precision(config.amp, config.channels_last, config.precision_reason or f"set by {_given(config)}")
    load_plugins(absolute_plugins(config.plugins))  # a plugin's architecture declares its own choice
    amp, layout, why = _auto_precision(config.arch, config.device)
    if auto_amp and auto_layout:
        return Precision(amp, layout, f"auto: {why}")
    if auto_amp:
        return Precision(amp, config.channels_last, f"set by {_given(config)}; the precision auto: {why}")
    if config.amp != amp:  # the layout was measured with the declared precision only
        layout, why = False, (f"NCHW, as {config.arch}'s channels_last was measured with {amp} only" if layout else why)
    return Precision(config.amp, layout, f"set by {_given(config)}; the layout auto: {why}")


def pin_precision(config, precision: Precision | None = None):
    """``config`` with its precision and layout decided here (or as ``precision`` says), with the
    reason, so that the process that runs it elsewhere (a grid worker, a SLURM job, a tuning
    trial, another rank) runs and reports this decision and computes the same run id."""
    precision = precision or decide_precision(config)
    return dataclasses.replace(config, amp=precision.amp, channels_last=precision.channels_last,
                               precision_reason=precision.reason)


@dataclass(frozen=True)
class Resolution:
    """A resolved config, the recipe that filled it, and where each recipe field came from."""

    config: object
    recipe: str
    family: str
    sources: dict
    precision: Precision

    def describe(self) -> dict:
        """JSON-ready, for the manifest."""
        recipe = find_recipe(self.recipe)
        return {"name": self.recipe, "family": self.family, "source": recipe.source if recipe else "",
                "fields": {k: {"value": getattr(self.config, k), "from": v} for k, v in self.sources.items()}}

    def header(self) -> str:
        """One line for the run header: the recipe and what it set, the precision and why."""
        set_here = [f"{k} {getattr(self.config, k):g}" if isinstance(getattr(self.config, k), float)
                    else f"{k} {getattr(self.config, k)}" for k, v in self.sources.items() if v.startswith("recipe")]
        what = ", ".join(set_here) if set_here else "nothing (all given)"
        return f"recipe {self.recipe}/{self.family}: {what}; {self.precision.header()}"


def find_recipe(name: str) -> Recipe | None:
    return next((r for r in RECIPES if r.name == name), None)


def recipe_for(arch: str, choice: str = "auto") -> Recipe | None:
    """The recipe a run gets: the first matching ``auto``, a named one, or none."""
    if choice == "none":
        return None
    if choice != "auto":
        recipe = find_recipe(choice)
        if recipe is None:
            from fabench.errors import unknown_choice

            raise unknown_choice("recipe", choice, [*RECIPE_CHOICES, *(r.name for r in RECIPES)])
        return recipe
    return next((r for r in RECIPES if r.matches(arch)), None)


def resolve(config) -> Resolution:
    """``config`` with every recipe field filled and its precision decided (see the module docstring)."""
    from fabench.rules import absolute_plugins, load_plugins, rule_family

    plugins = absolute_plugins(config.plugins)  # recorded as absolute paths: eval and resume find them anywhere
    load_plugins(plugins)  # a plugin's rule is known before its family is asked
    family = rule_family(config.rule)
    recipe = recipe_for(config.arch, config.recipe)
    base = config.rule.split("+")[0]
    offered = recipe.for_family(family, base) if recipe else {}
    values, sources = {}, {}
    for name in RECIPE_FIELDS:
        given = getattr(config, name)
        if given is not None:
            values[name], sources[name] = given, "given"
    optimizer = values.get("optimizer") or offered.get("optimizer") or FALLBACK["optimizer"]
    recipe_optimizer = offered.get("optimizer", optimizer)
    for name in RECIPE_FIELDS:
        if name in values:
            continue
        usable = name not in OPTIMIZER_FIELDS or recipe_optimizer == optimizer
        if usable and name in offered:
            values[name], sources[name] = offered[name], f"recipe {recipe.name}"
        elif name in OPTIMIZER_FIELDS:
            values[name], sources[name] = OPTIMIZER_DEFAULTS.get(optimizer, OPTIMIZER_DEFAULTS["sgd"])[name], f"{optimizer} default"
        else:
            values[name], sources[name] = FALLBACK[name], "default"
    if plugins != config.plugins:
        values["plugins"] = plugins
    filled = dataclasses.replace(config, **values)
    precision = decide_precision(filled)
    return Resolution(pin_precision(filled, precision), recipe.name if recipe else "none", family, sources, precision)
