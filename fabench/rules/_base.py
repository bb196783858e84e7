"""What a learning rule is: one class, registered where it is defined.

A :class:`Rule` decides how a covered layer's error signal ``δx`` is formed; a
:class:`Modifier` (written after ``+``) changes how the forward weights are updated. Each is a
class that owns everything about itself: its options (a typed declaration, :class:`Option`),
the buffers it puts on a layer, the feedback B it forms inside backward, what it does at each
optimizer step and epoch, its family (for recipes and tuning), its extra work for the cost
model and its one-line description with provenance. :func:`register_rule` makes a class
known by its name to every command. docs/writing-rules.md walks through writing one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fabench._registry import Registry
from fabench.errors import FabenchError

#: Families a rule may belong to: what reaches the hidden layers. Recipes and tuning differ by family.
FAMILIES = ("bp", "random", "sign", "direct", "learned")
#: Buffer names on a layer are ``feedback_<key>``: the prefix marks them as the rule's.
BUFFER_PREFIX = "feedback_"
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_.][a-z0-9]+)*$")
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Option:
    """One option a rule or modifier takes: its key, type, default, help and what values it accepts.

    ``check``: a predicate a value must pass, described by ``must`` ("positive"); ``choices``: the
    only values allowed. ``label`` names the option in messages (default: ``rule option KEY``).
    A default of None means "unset" and is always accepted.
    """

    key: str
    default: Any
    help: str
    type: type = str
    choices: tuple = ()
    check: Callable[[Any], bool] | None = None
    must: str = ""
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"rule option {self.key}"

    def parse(self, value: Any) -> Any:
        """``value`` as this option's type, or a one-line FabenchError saying what would be right."""
        if value is None and self.default is None:
            return None
        value = self._coerce(value)
        if self.choices and value not in self.choices:
            raise FabenchError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got '{value}'",
                               setting=self.key)
        if self.check is not None and not self.check(value):
            raise FabenchError(f"{self.name} must be {self.must or 'valid'}, got {value}", setting=self.key)
        return value

    def _coerce(self, value: Any) -> Any:
        wrong = FabenchError(f"{self.name} must be {_TYPE_WORDS.get(self.type, self.type.__name__)}, got '{value}'",
                             setting=self.key)
        if self.type is bool:
            text = str(value).strip().lower()
            if isinstance(value, bool) or text in ("true", "false", "1", "0", "yes", "no"):
                return value if isinstance(value, bool) else text in ("true", "1", "yes")
            raise wrong
        if self.type is int:
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and
                                                                          value.strip().lstrip("-").isdigit())):
                raise wrong
            return int(value)
        if self.type is float:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise wrong from None
            if isinstance(value, bool) or not math.isfinite(number):
                raise wrong
            return number
        return value if isinstance(value, self.type) else self.type(value)


_TYPE_WORDS = {int: "a whole number", float: "a finite number", bool: "true or false", str: "text"}


class Settings(Mapping):
    """A rule's option values by key, also readable as attributes (``self.settings.scale``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self._values})"


class _Part:
    """What rules and modifiers share: name, description, options, provenance and per-layer setup."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    #: where the class comes from: ``built-in``, ``plugin PATH``, ``entry point NAME`` (set on registration)
    source: ClassVar[str] = "built-in"
    #: the content hash of the file that defines it (plugins and entry points; "" for built-ins)
    source_sha256: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any], seed: int) -> None:
        self.settings = Settings(settings)
        self.seed = seed

    @classmethod
    def option_keys(cls) -> tuple[str, ...]:
        return tuple(o.key for o in cls.options)

    def init_layer(self, layer) -> None:
        """At attach time, on each covered layer: create its buffers (``layer.add_buffer``)."""

    def attach_optimizer(self, optimizer, layers: Mapping) -> list:
        """Register optimizer step hooks (``register_step_pre_hook``/``post_hook``); return removable handles."""
        return []


class Rule(_Part):
    """A learning rule: how δx is formed. Subclass it, set the class attributes, override the hooks.

    ``feedback`` runs inside backward with autocast off, on the layer's device; it returns B, a
    tensor of W's shape and dtype, and δx is then ``Bᵀ δy`` (a conv: the transposed convolution
    with B). Everything else a rule may do is an optional hook with a no-op default.
    """

    family: ClassVar[str] = "random"
    #: recipe settings this rule's mechanism needs under every recipe, e.g. {"weight_decay": 10.0}
    recipe: ClassVar[dict] = {}
    #: a short label recorded in the manifest (defaults to the name)
    kind: ClassVar[str] = ""
    #: True: the rule leaves every layer's forward and backward as they are (backprop)
    exact: ClassVar[bool] = False

    def feedback(self, layer, weight, buffers: Mapping):
        """B for ``layer`` now, from the weight its forward used and the buffers saved with it."""
        raise NotImplementedError

    def attach_model(self, model, layers: Mapping, *, input_shape=None, feedback_memory: str = "auto") -> list:
        """After every layer's ``init_layer``: model-wide setup (root hooks); return removable handles.
        ``input_shape``: one sample's shape when known; ``feedback_memory``: the run's memory policy text."""
        return []

    def begin_training(self, layers: Mapping, steps_per_epoch: int) -> None:
        """Once, before the first step of a fresh run (not on resume)."""

    def end_epoch(self, layers: Mapping) -> None:
        """After each epoch's last step."""

    def step_work(self, layer, needs_dx: bool) -> tuple[list[tuple[float, float]], float]:
        """Work beyond forward, weight gradient and δx per training step on ``layer`` for the cost
        model: ``([(FLOPs, bytes), ...] extra kernels, random numbers drawn)``."""
        return [], 0.0

    def describe(self) -> dict:
        """Extra JSON-ready facts for the run's manifest."""
        return {"feedback_form": "weight-shared"}


class Modifier(_Part):
    """A modifier, written after ``+``: changes how the forward weights are updated (step hooks).

    ``step_order``: modifiers' step hooks run in ascending order, whatever order the spec names them.
    """

    step_order: ClassVar[int] = 0


RULES: Registry[type[Rule]] = Registry("rule")
MODIFIERS: Registry[type[Modifier]] = Registry("rule modifier")


def _definition_problem(cls: type) -> str | None:
    """What is wrong with a rule or modifier class, or None."""
    if not isinstance(cls, type) or not issubclass(cls, (Rule, Modifier)):
        return f"{cls!r} is not a subclass of fabench.rules.Rule or fabench.rules.Modifier"
    if not isinstance(cls.name, str) or not _NAME.match(cls.name):
        return (f"{cls.__name__}.name must be a lower-case name such as 'my-rule' (letters, digits, '-', '_', '.'), "
                f"got {cls.name!r}")
    if not isinstance(cls.description, str) or not cls.description.strip() or "\n" in cls.description:
        return f"{cls.__name__}.description must be one non-empty line saying what the rule does and its source"
    if issubclass(cls, Rule):
        if cls.family not in FAMILIES:
            return f"{cls.__name__}.family must be one of {', '.join(FAMILIES)}, got {cls.family!r}"
        if not cls.exact and cls.feedback is Rule.feedback and cls.attach_model is Rule.attach_model:
            return f"{cls.__name__} must override feedback() (or attach_model() for direct feedback)"
    keys = [getattr(o, "key", None) for o in cls.options]
    for option in cls.options:
        if not isinstance(option, Option):
            return f"{cls.__name__}.options must hold fabench.rules.Option objects, got {option!r}"
        if not _KEY.match(option.key):
            return f"{cls.__name__}: option key {option.key!r} must be lower-case letters, digits and '_'"
        if keys.count(option.key) > 1:
            return f"{cls.__name__}: option '{option.key}' is declared twice"
        try:
            option.parse(option.default)
        except FabenchError as error:
            return f"{cls.__name__}: the default of option '{option.key}' is refused by its own check ({error})"
    return None


#: Set by the plugin loader while it imports a plugin: the provenance registrations get.
_loading: dict[str, str] = {}


def register_rule(cls):
    """Class decorator: make a :class:`Rule` or :class:`Modifier` subclass known by its ``name``.

    Refuses, with one line, a badly defined class or a name that is already taken by another class.
    """
    problem = _definition_problem(cls)
    if problem:
        raise FabenchError(problem)
    registry = RULES if issubclass(cls, Rule) else MODIFIERS
    if cls.name in registry:
        existing = registry.get(cls.name)
        sha256 = _loading.get("sha256", "") or cls.source_sha256
        same = existing.__qualname__ == cls.__qualname__ and (
            existing.__module__ == cls.__module__ or (sha256 and existing.source_sha256 == sha256))
        if not same:
            raise FabenchError(f"{registry.kind} '{cls.name}' is already defined ({existing.source}); "
                               f"give {cls.__name__} another name")
        registry._entries.pop(cls.name)
    if _loading:
        cls.source, cls.source_sha256 = _loading["source"], _loading["sha256"]
    elif not cls.__module__.startswith("fabench."):
        cls.source, cls.source_sha256 = f"module {cls.__module__}", ""
    if issubclass(cls, Rule) and "kind" not in cls.__dict__:
        cls.kind = cls.name
    registry.register(cls.name, cls)
    return cls


def users_of(key: str) -> list[str]:
    """Rules (by name) and modifiers (as ``+name``) that declare option ``key``."""
    return ([n for n in RULES if key in RULES.get(n).option_keys()]
            + [f"+{n}" for n in MODIFIERS if key in MODIFIERS.get(n).option_keys()])


def every_option_key() -> set[str]:
    return {k for n in RULES for k in RULES.get(n).option_keys()} | \
        {k for n in MODIFIERS for k in MODIFIERS.get(n).option_keys()}

