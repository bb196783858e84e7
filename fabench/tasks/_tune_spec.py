"""A task's ``tune:`` section: the budget and the search space of ``fabench tune``.

The space is data, written in the task file::

    tune:
      trials: 8            # per cell (rule x arch x dataset x variant); --trials overrides
      epochs: 4            # per trial (default: the task's epochs)
      val_split: 1000      # images held out of training; trials are scored on them
      seed: 100            # the first seed every trial trains with (not one of the task's seeds)
      seeds: 2             # seeds per trial (100, 101): a trial scores its worst seed
      space:               # shared settings, searched for every rule
        lr: {scale: [0.1, 10]}                            # around the cell's own (recipe) value, log
      families:            # each rule family's own settings, added to (or replacing) the shared ones
        random: {weight_init_scale: {low: 0.03, high: 1.0, log: true}}
      rules:               # one rule's own options (by its name), added to (or replacing) those
        wm: {mirror_lr: {low: 0.003, high: 0.1, log: true}}

A parameter is ``{low, high}`` (``log: true`` for a log scale; integers for integer settings),
``{scale: [a, b]}`` (log-uniform between a and b times the cell's own value of the setting: the
recipe is the prior) or ``{choices: [...]}``. Every name is a run setting (``fabench run``'s
option without the dashes, ``_`` for ``-``). The cell's own settings are always the first trial,
so tuning never scores a rule below its recipe on the validation images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from fabench.errors import FabenchError, unknown_choice

#: Families a ``families:`` entry may name (fabench.rules.rule_family).
TUNE_FAMILIES = ("bp", "sign", "random", "direct", "learned")
#: Keys of the ``tune:`` section.
TUNE_KEYS = ("trials", "epochs", "val_split", "seed", "seeds", "space", "families", "rules")
#: What a task without its own ``tune:`` values gets.
DEFAULT_TRIALS = 8
DEFAULT_VAL_SPLIT = 1000
DEFAULT_TUNE_SEED = 100
DEFAULT_SPACE = {"lr": {"scale": [0.1, 10.0]}}
#: Settings a search may not touch: they are the tuning protocol itself, or the grid's axes.
UNTUNABLE = frozenset({"epochs", "val_split", "seed", "rule", "arch", "dataset", "task", "task_version",
                       "device", "data_dir", "results_dir", "workers", "progress", "diagnostics", "recipe",
                       "amp", "channels_last", "precision_reason"})


@dataclass(frozen=True)
class Param:
    """One searched setting: a range (absolute or around the cell's value) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    relative: bool = False
    choices: tuple = ()

    def suggest(self, trial, base: Any) -> Any:
        """Draw this setting for an Optuna trial; ``base`` is the cell's own value (for ``scale``)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.relative:
            factor = trial.suggest_float(self.name + "_scale", self.low, self.high, log=True)
            return base * factor
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def prior(self, base: Any) -> tuple[str, Any] | None:
        """The Optuna parameter that reproduces the cell's own value, if it lies in the range."""
        if self.choices:
            return (self.name, base) if base in self.choices else None
        if self.relative:
            return (self.name + "_scale", 1.0) if self.low <= 1.0 <= self.high else None
        if base is None or not (self.low <= base <= self.high):
            return None
        return self.name, int(base) if self.integer else float(base)

    def describe(self) -> str:
        if self.choices:
            return f"{self.name} in {list(self.choices)}"
        if self.relative:
            return f"{self.name} = own value x [{self.low:g}, {self.high:g}] (log)"
        return f"{self.name} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class TuneSpec:
    """The budget and search space of a task's tuning."""

    trials: int = DEFAULT_TRIALS
    epochs: int | None = None
    val_split: int = DEFAULT_VAL_SPLIT
    seed: int = DEFAULT_TUNE_SEED
    seeds: int = 1

    @property
    def trial_seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.seeds))
    space: tuple[Param, ...] = ()
    families: dict[str, tuple[Param, ...]] = field(default_factory=dict)
    rules: dict[str, tuple[Param, ...]] = field(default_factory=dict)

    def params_for(self, family: str, rule: str = "") -> tuple[Param, ...]:
        """The shared parameters, with the family's and then the rule's own added or put in their place."""
        params = self.space
        for own in (self.families.get(family, ()), self.rules.get(rule, ())):
            names = {p.name for p in own}
            params = tuple(p for p in params if p.name not in names) + own
        return params

    def with_trials(self, trials: int | None) -> TuneSpec:
        return self if trials is None else dataclasses.replace(self, trials=trials)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FabenchError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise FabenchError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise FabenchError(f"{what} must be a finite number, got {value!r}")
    return number


def parse_param(name: str, value: Any, field_types: dict[str, str]) -> Param:
    """One ``space`` entry, checked against the run setting it names."""
    if name in UNTUNABLE or name not in field_types:
        known = sorted(n for n in field_types if n not in UNTUNABLE)
        raise unknown_choice("tunable run setting", str(name), known)
    if not isinstance(value, dict):
        raise FabenchError(f"'{name}' must be {{low: A, high: B}}, {{scale: [A, B]}} or {{choices: [...]}}, got {value!r}")
    kinds = [k for k in ("low", "scale", "choices") if k in value]
    unknown = set(value) - {"low", "high", "log", "scale", "choices"}
    if len(kinds) != 1 or unknown:
        raise FabenchError(f"'{name}' needs exactly one of low/high, scale or choices (got keys {sorted(value)})")
    if "choices" in value:
        if not isinstance(value["choices"], list) or not value["choices"]:
            raise FabenchError(f"'{name}.choices' must be a non-empty list")
        return Param(name, choices=tuple(value["choices"]))
    integer = field_types[name].split("|")[0].strip() == "int"
    if "scale" in value:
        pair = value["scale"]
        if not isinstance(pair, list) or len(pair) != 2:
            raise FabenchError(f"'{name}.scale' must be [A, B], two factors of the cell's own value")
        low, high = (_number(v, f"'{name}.scale'") for v in pair)
        if not 0 < low <= high or integer:
            raise FabenchError(f"'{name}.scale' must be two positive factors A <= B of a number setting")
        return Param(name, low, high, log=True, relative=True)
    low, high = _number(value["low"], f"'{name}.low'"), _number(value.get("high"), f"'{name}.high'")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise FabenchError(f"'{name}.log' must be true or false")
    if low > high or (log and low <= 0):
        raise FabenchError(f"'{name}' needs low <= high" + (" and low > 0 on a log scale" if log else ""))
    return Param(name, low, high, log=log, integer=integer)


def parse_space(value: Any, field_types: dict[str, str], where: str) -> tuple[Param, ...]:
    """A mapping of setting name -> parameter."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise FabenchError(f"'{where}' must map run settings to ranges, e.g. {{lr: {{scale: [0.1, 10]}}}}")
    return tuple(parse_param(str(name), spec, field_types) for name, spec in value.items())


def parse_tune(value: Any, field_types: dict[str, str], task_seeds: tuple[int, ...]) -> TuneSpec:
    """The ``tune:`` section (None or empty: the defaults), or FabenchError naming the problem."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise FabenchError("'tune' must be a mapping with some of: " + ", ".join(TUNE_KEYS))
    unknown = [k for k in value if k not in TUNE_KEYS]
    if unknown:
        raise unknown_choice("tune key", str(unknown[0]), TUNE_KEYS)
    counts = {}
    for key, default, least in (("trials", DEFAULT_TRIALS, 1), ("epochs", None, 1),
                                ("val_split", DEFAULT_VAL_SPLIT, 1), ("seed", DEFAULT_TUNE_SEED, 0), ("seeds", 1, 1)):
        given = value.get(key, default)
        if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < least):
            raise FabenchError(f"'tune.{key}' must be an integer of at least {least}, got {given!r}")
        counts[key] = given
    clash = sorted(set(range(counts["seed"], counts["seed"] + counts["seeds"])) & set(task_seeds))
    if clash:
        raise FabenchError(f"tuning seed {clash[0]} is one of the task's seeds; tuning must use seeds the grid does not")
    families = value.get("families") or {}
    if not isinstance(families, dict):
        raise FabenchError("'tune.families' must map rule families to spaces")
    parsed = {}
    for family, space in families.items():
        if family not in TUNE_FAMILIES:
            raise unknown_choice("rule family", str(family), TUNE_FAMILIES)
        parsed[family] = parse_space(space, field_types, f"tune.families.{family}")
    rules = value.get("rules") or {}
    if not isinstance(rules, dict):
        raise FabenchError("'tune.rules' must map rule names to spaces")
    by_rule = {str(rule): parse_space(space, field_types, f"tune.rules.{rule}") for rule, space in rules.items()}
    space = parse_space(value.get("space", DEFAULT_SPACE), field_types, "tune.space")
    return TuneSpec(trials=counts["trials"], epochs=counts["epochs"], val_split=counts["val_split"],
                    seed=counts["seed"], seeds=counts["seeds"], space=space, families=parsed, rules=by_rule)
