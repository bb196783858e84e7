"""What a task is: the validated contents of a task file, and its expansion into grid cells.

A task names the axes of a grid (``rules`` × ``archs`` × ``datasets`` × ``seeds``, and
optionally named ``variants``) and the RunConfig settings of its cells:

- ``overrides``: settings for every cell;
- ``variants``: named groups of settings that form one more grid axis (e.g. ``sgd``/``adam``);
- ``when``: a list of ``{match: {rule|arch|dataset|seed|variant: pattern(s)}, set: {...}}``
  entries applied in order to the cells they match (fnmatch patterns), e.g. "arch1 uses Adam"
  or "dfa uses a smaller learning rate";
- ``skip``: a list of ``{rule|arch|dataset|seed|variant: pattern(s)}`` mappings; cells matching
  one are not part of the grid (e.g. dense-fa on a ResNet, whose matrices would not fit).

Precedence, lowest first: RunConfig defaults < ``overrides`` < the cell's variant < matching
``when`` entries in file order. Every value is checked where it is written, so an error names
the file and line of the offending key.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabench.errors import FabenchError, unknown_choice
from fabench.tasks._source import Location, Problem, RawTask
from fabench.tasks._tune_spec import TuneSpec, parse_tune
from fabench.train.config import SETTINGS, RunConfig
from fabench.train.recipes import pin_precision
from fabench.train.settings import field_types

#: Keys a task file may hold.
TASK_KEYS = (
    "task", "version", "description", "notes", "include",
    "rules", "archs", "datasets", "seeds", "overrides", "variants", "when", "skip", "tune", "tuned", "plugins",
)
#: Keys a complete task needs (fragments, files named ``_*.yaml``, may leave them out).
REQUIRED_KEYS = ("task", "version", "description", "rules", "archs", "datasets", "seeds")
#: RunConfig fields set by the grid axes or by the task itself, never by overrides.
AXIS_FIELDS = frozenset(name for name, meta in SETTINGS.items() if meta.task_file == "axis")
#: RunConfig fields that say where a run happens; the command line decides them.
PLACEMENT_FIELDS = frozenset(name for name, meta in SETTINGS.items() if meta.task_file == "placement")
#: Axes a ``when`` entry may match on.
MATCH_KEYS = ("rule", "arch", "dataset", "seed", "variant")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_FIELD_TYPES = field_types(RunConfig)
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "None": "null",
               "dict[str, Any]": "a mapping of option names to values"}
_PLURAL_WORDS = {"int": "integers", "float": "numbers", "str": "strings"}
#: ``list[int]`` -> ("list", "int"); ``tuple[str, ...]`` -> ("tuple", "str")
_SEQUENCE = re.compile(r"(list|tuple)\[(\w+)(?:, \.\.\.)?\]")


@dataclass(frozen=True)
class When:
    """A conditional group of settings: applied to the cells whose axes match every pattern."""

    match: dict[str, tuple[str, ...]]
    settings: dict[str, Any]

    def applies(self, axes: dict[str, Any]) -> bool:
        """True if every matched axis of the cell fits one of its patterns."""
        return all(
            any(fnmatch.fnmatchcase(str(axes[key]), pattern) for pattern in patterns)
            for key, patterns in self.match.items()
        )


@dataclass(frozen=True)
class Cell:
    """One grid cell: its axis values and the fully resolved RunConfig."""

    rule: str
    arch: str
    dataset: str
    seed: int
    variant: str | None
    config: RunConfig

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def label(self) -> str:
        """A short human name: ``arch1/fa-usf/cifar10-mini/s0`` (plus ``/variant``)."""
        parts = [self.arch, self.rule, self.dataset, f"s{self.seed}"]
        return "/".join([*parts, self.variant] if self.variant else parts)

    def axes(self) -> dict[str, Any]:
        """The axis values ``when`` entries and filters match on."""
        return {"rule": self.rule, "arch": self.arch, "dataset": self.dataset, "seed": self.seed, "variant": self.variant or ""}


@dataclass(frozen=True)
class Task:
    """A validated task: grid axes, settings and provenance text."""

    name: str
    version: str
    description: str
    notes: str
    path: Path
    rules: tuple[str, ...]
    archs: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    when: tuple[When, ...]
    skip: tuple[When, ...] = ()
    #: the ``tune:`` section (fabench tune's budget and search space; defaults when absent)
    tune: TuneSpec = field(default_factory=TuneSpec)
    #: ``tuned: true``: ``fabench grid`` runs the cells with their tuned settings (``--untuned`` overrides)
    tuned: bool = False

    def cells(self, **placement: Any) -> list[Cell]:
        """Expand the grid into cells; ``placement`` sets results_dir, data_dir, device, ...

        Order: seeds outermost, so a partly run grid already has every rule at seed 0. Each
        cell's precision is decided here, for its device (``--amp auto``:
        :func:`fabench.train.recipes.pin_precision`), so that whichever process or machine runs
        the cell runs what its run id says.
        """
        variants = list(self.variants) or [None]
        cells = []
        for seed, dataset, arch, variant, rule in itertools.product(self.seeds, self.datasets, self.archs, variants, self.rules):
            axes = {"rule": rule, "arch": arch, "dataset": dataset, "seed": seed, "variant": variant or ""}
            if any(entry.applies(axes) for entry in self.skip):
                continue
            settings = dict(self.overrides)
            if variant is not None:
                settings.update(self.variants[variant])
            for entry in self.when:
                if entry.applies(axes):
                    settings.update(entry.settings)
            config = pin_precision(RunConfig.from_dict({
                **settings, **placement, "rule": rule, "arch": arch, "dataset": dataset, "seed": seed,
                "task": self.name, "task_version": self.version,
            }))
            cells.append(Cell(rule, arch, dataset, seed, variant, config))
        return cells


def _describe_type(annotation: str) -> str:
    """A field annotation in words for error messages: 'int | None' -> 'an integer or null'."""
    words = []
    for alt in (a.strip() for a in annotation.split("|")):
        inner = _SEQUENCE.fullmatch(alt)
        words.append(f"a list of {_PLURAL_WORDS.get(inner.group(2), inner.group(2))}" if inner else _TYPE_WORDS.get(alt, alt))
    return " or ".join(words)


def _coerce_one(kind: str, value: Any) -> tuple[bool, Any]:
    """Check ``value`` against one simple type name; floats accept ints and numeric strings.

    Numeric strings are accepted for float fields because PyYAML (YAML 1.1) reads ``1e-3``,
    without a dot, as a string.
    """
    if kind == "None":
        return value is None, value
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if kind == "str":
        return isinstance(value, str), value
    if kind.startswith("dict["):
        return isinstance(value, dict) and all(isinstance(key, str) for key in value), value
    inner = _SEQUENCE.fullmatch(kind)
    if inner:
        if isinstance(value, str) and inner.group(1) == "tuple":
            value = [value]
        if not isinstance(value, list):
            return False, value
        out = []
        for item in value:
            ok, item = _coerce_one(inner.group(2), item)
            if not ok:
                return False, value
            out.append(item)
        return True, tuple(out) if inner.group(1) == "tuple" else out
    raise TypeError(f"task files cannot read a setting annotated {kind!r}; teach _coerce_one that type")


def coerce_setting(name: str, value: Any) -> Any:
    """Return ``value`` converted to RunConfig field ``name``'s type, or raise FabenchError."""
    annotation = _FIELD_TYPES[name]
    for kind in (a.strip() for a in annotation.split("|")):
        ok, converted = _coerce_one(kind, value)
        if ok:
            return converted
    raise FabenchError(f"'{name}' must be {_describe_type(annotation)}, got {value!r}")


class _Checker:
    """Collects the problems of one task file while reading its values."""

    def __init__(self, raw: RawTask) -> None:
        self.raw = raw
        self.problems: list[Problem] = []

    def add(self, where: Location, message: str) -> None:
        self.problems.append(Problem(where, message))

    def name_list(self, key: str, check) -> tuple[str, ...]:
        """A non-empty list of distinct names, each accepted by ``check`` (which may rename)."""
        value = self.raw.data.get(key)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.add(self.raw.loc(key), f"'{key}' must be a non-empty list of names")
            return ()
        names: list[str] = []
        for i, item in enumerate(value):
            where = self.raw.loc(key, i) if isinstance(self.raw.data.get(key), list) else self.raw.loc(key)
            if not isinstance(item, str) or not item.strip():
                self.add(where, f"'{key}' entries must be names, got {item!r}")
                continue
            try:
                name = check(item.strip())
            except FabenchError as err:
                self.add(where, str(err))
                continue
            if name in names:
                self.add(where, f"'{name}' is listed twice in '{key}'")
                continue
            names.append(name)
        return tuple(names)

    def seeds(self) -> tuple[int, ...]:
        """A non-empty list of distinct non-negative integers (a single integer is accepted)."""
        value = self.raw.data.get("seeds")
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            self.add(self.raw.loc("seeds"), "'seeds' must be a non-empty list of integers, e.g. [0, 1, 2]")
            return ()
        seeds: list[int] = []
        for i, item in enumerate(value):
            where = self.raw.loc("seeds", i)
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                self.add(where, f"seeds must be non-negative integers, got {item!r}")
            elif item in seeds:
                self.add(where, f"seed {item} is listed twice")
            else:
                seeds.append(item)
        return tuple(seeds)

    def settings(self, path: tuple, value: Any) -> dict[str, Any]:
        """A mapping of RunConfig settings, each key known, allowed and of the right type."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(self.raw.loc(*path), f"'{'.'.join(map(str, path))}' must be a mapping of run settings (epochs: 10, lr: 0.1, ...)")
            return {}
        allowed = [n for n in _FIELD_TYPES if n not in AXIS_FIELDS | PLACEMENT_FIELDS]
        out: dict[str, Any] = {}
        for key, raw_value in value.items():
            where = self.raw.loc(*path, key)
            if key in AXIS_FIELDS:
                self.add(where, f"'{key}' is set by the task itself (use the rules/archs/datasets/seeds/version keys), not in settings")
            elif key in PLACEMENT_FIELDS:
                self.add(where, f"'{key}' says where a run happens; give it on the command line, not in a task file")
            elif key not in _FIELD_TYPES:
                self.add(where, str(unknown_choice("run setting", str(key), allowed)))
            else:
                try:
                    converted = coerce_setting(key, raw_value)
                    RunConfig.from_dict({key: converted}).validate()
                except FabenchError as err:
                    self.add(where, str(err))
                    continue
                out[key] = converted
        return out

    def variants(self) -> dict[str, dict[str, Any]]:
        """Named groups of settings: name -> checked settings."""
        value = self.raw.data.get("variants")
        if value is None:
            return {}
        if not isinstance(value, dict) or not value:
            self.add(self.raw.loc("variants"), "'variants' must be a mapping of variant names to settings, e.g. {sgd: {optimizer: sgd}}")
            return {}
        out = {}
        for name, settings in value.items():
            if not isinstance(name, str) or not _NAME.match(name):
                self.add(self.raw.loc("variants", name), f"variant name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
                continue
            out[name] = self.settings(("variants", name), settings)
        return out

    def when(self) -> tuple[When, ...]:
        """Conditional settings, each ``{match: {...}, set: {...}}``, in file order."""
        value = self.raw.data.get("when")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.add(self.raw.loc("when"), "'when' must be a list of {match: {...}, set: {...}} entries")
            return ()
        entries = []
        for i, item in enumerate(value):
            where = self.raw.loc("when", i)
            if not isinstance(item, dict) or set(item) != {"match", "set"}:
                self.add(where, "each 'when' entry needs exactly the keys 'match' and 'set'")
                continue
            match = self._match(("when", i, "match"), item["match"])
            settings = self.settings(("when", i, "set"), item["set"])
            if match is not None:
                entries.append(When(match, settings))
        return tuple(entries)

    def skip(self) -> tuple[When, ...]:
        """Cells left out of the grid: a list of ``match`` mappings."""
        value = self.raw.data.get("skip")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.add(self.raw.loc("skip"), "'skip' must be a list of {rule|arch|dataset|seed|variant: pattern(s)} mappings")
            return ()
        entries = [self._match(("skip", i), item) for i, item in enumerate(value)]
        return tuple(When(match, {}) for match in entries if match is not None)

    def tune(self, seeds: tuple[int, ...], rules: tuple[str, ...]) -> TuneSpec:
        """The ``tune:`` section (fabench.tasks._tune_spec), or the defaults."""
        try:
            spec = parse_tune(self.raw.data.get("tune"), _FIELD_TYPES, seeds)
        except FabenchError as err:
            self.add(self.raw.loc("tune"), str(err))
            return TuneSpec()
        for rule in spec.rules:
            if rule not in rules:
                self.add(self.raw.loc("tune", "rules", rule), str(unknown_choice("rule of this task", rule, rules)))
        return spec

    def _match(self, path: tuple, value: Any) -> dict[str, tuple[str, ...]] | None:
        """A ``match`` mapping: known axes to one pattern or a list of patterns."""
        where = self.raw.loc(*path)
        if not isinstance(value, dict) or not value:
            self.add(where, f"'match' must map some of {', '.join(MATCH_KEYS)} to fnmatch patterns")
            return None
        match = {}
        for key, patterns in value.items():
            if key not in MATCH_KEYS:
                self.add(self.raw.loc(*path, key), str(unknown_choice("match key", str(key), MATCH_KEYS)))
                continue
            items = patterns if isinstance(patterns, list) else [patterns]
            if not items or not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in items):
                self.add(self.raw.loc(*path, key), f"'{key}' must be a pattern or a list of patterns")
                continue
            match[key] = tuple(str(p) for p in items)
        return match


def _load_plugins_of(checker, raw: RawTask) -> None:
    """Import the plugins a task names (``plugins:``, or ``plugins`` in ``overrides``), relative to its
    file, and make their paths absolute, so that every cell's process finds them wherever it starts."""
    from fabench.rules import absolute_plugins, load_plugins

    overrides = raw.data.get("overrides")
    for holder in (raw.data, overrides if isinstance(overrides, dict) else {}):
        value = holder.get("plugins")
        if not value or not isinstance(value, (str, list)):
            continue
        try:
            files = absolute_plugins([str(v) for v in ([value] if isinstance(value, str) else value)],
                                     base_dir=Path(raw.path).parent)
            load_plugins(files)
        except FabenchError as error:
            checker.add(raw.loc(*(("plugins",) if holder is raw.data else ("overrides", "plugins"))), str(error))
            continue
        holder["plugins"] = list(files)
    top = raw.data.get("plugins")
    if isinstance(top, list) and isinstance(overrides, (dict, type(None))):  # every cell's run loads them
        merged = raw.data.setdefault("overrides", {}) if overrides is None else overrides
        merged["plugins"] = list(dict.fromkeys([*top, *(merged.get("plugins") or [])]))


def _check_rule(name: str) -> str:
    """The canonical name of a rule spec, or FabenchError (fabench.rules decides)."""
    from fabench.rules import parse_rule

    return parse_rule(name).name


def _check_arch(name: str) -> str:
    """The architecture name if fabench.archs knows it, else FabenchError."""
    from fabench.archs import check_arch

    check_arch(name)
    return name


def _check_dataset(name: str) -> str:
    """The dataset name if fabench.data knows it, else FabenchError."""
    from fabench.data import check_dataset

    check_dataset(name)
    return name


def _scalar_text(checker: _Checker, key: str, *, required: bool) -> str:
    """A string value (numbers allowed for ``version``), or '' with a problem noted."""
    value = checker.raw.data.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (key != "version" and not isinstance(value, str)):
        checker.add(checker.raw.loc(key), f"'{key}' must be {'a version string' if key == 'version' else 'text'}, got {value!r}")
        return ""
    text = str(value).strip()
    if required and not text:
        checker.add(checker.raw.loc(key), f"'{key}' must not be empty")
    return text


def build_task(raw: RawTask, *, fragment: bool = False) -> tuple[Task | None, list[Problem]]:
    """Validate a read task file; return the Task (None for fragments or on problems) and problems.

    A fragment (a file named ``_*.yaml``, meant only to be included) is checked key by key
    but needs no required keys and is not expanded.
    """
    checker = _Checker(raw)
    for key in raw.data:
        if key not in TASK_KEYS:
            checker.add(raw.loc(key), str(unknown_choice("task key", str(key), TASK_KEYS)))
    if not fragment:
        for key in REQUIRED_KEYS:
            if key not in raw.data:
                checker.add(raw.loc(), f"missing required key '{key}' (files only meant to be included must be named _*.yaml)")
    name = _scalar_text(checker, "task", required=True)
    if name and not _NAME.match(name):
        checker.add(raw.loc("task"), f"task name '{name}' must be lower-case letters, digits, '.', '_' or '-'")
    version = _scalar_text(checker, "version", required=True)
    description = _scalar_text(checker, "description", required=True)
    notes = _scalar_text(checker, "notes", required=False)
    present = set(raw.data)
    _load_plugins_of(checker, raw)  # the task's plugins register their rules before the rules are checked
    rules = checker.name_list("rules", _check_rule) if "rules" in present else ()
    archs = checker.name_list("archs", _check_arch) if "archs" in present else ()
    datasets = checker.name_list("datasets", _check_dataset) if "datasets" in present else ()
    seeds = checker.seeds() if "seeds" in present else ()
    overrides = checker.settings(("overrides",), raw.data.get("overrides"))
    variants = checker.variants()
    when = checker.when()
    skip = checker.skip()
    tune = checker.tune(seeds, rules)
    tuned = raw.data.get("tuned", False)
    if not isinstance(tuned, bool):
        checker.add(raw.loc("tuned"), f"'tuned' must be true or false, got {tuned!r}")
    if fragment or checker.problems:
        return None, checker.problems
    task = Task(name, version, description, notes, raw.path, rules, archs, datasets, seeds, overrides, variants, when,
                skip, tune, tuned)
    _check_cells(task, raw, checker)
    return (None if checker.problems else task), checker.problems


def _setting_location(task: Task, raw: RawTask, cell: Cell, name: str | None) -> Location:
    """Where the cell's value of setting ``name`` was written: the last matching ``when``
    entry that sets it, else its variant, else ``overrides``, else the ``task`` line."""
    if name:
        for index in range(len(task.when) - 1, -1, -1):
            entry = task.when[index]
            if name in entry.settings and entry.applies(cell.axes()):
                return raw.loc("when", index, "set", name)
        if cell.variant and name in task.variants.get(cell.variant, {}):
            return raw.loc("variants", cell.variant, name)
        if name in task.overrides:
            return raw.loc("overrides", name)
    return raw.loc("overrides") if "overrides" in raw.data else raw.loc("task")


def _check_cells(task: Task, raw: RawTask, checker: _Checker) -> None:
    """Expand the grid: every cell must pass train's checks, every ``when`` must match a cell,
    and no two cells may be the same run."""
    from fabench.train.session import check_config

    try:
        cells = task.cells()
    except FabenchError as err:
        checker.add(raw.loc("task"), str(err))
        return
    for i, entry in enumerate(task.when):
        if not any(entry.applies(cell.axes()) for cell in cells):
            checker.add(raw.loc("when", i, "match"), "this 'when' entry matches no cell of the grid (a typo in a name or pattern?)")
    reported: set[str] = set()
    owners: dict[str, str] = {}
    for cell in cells:
        try:
            check_config(cell.config)  # everything fabench.train checks before building anything
        except FabenchError as err:
            if str(err) not in reported:
                reported.add(str(err))
                where = _setting_location(task, raw, cell, err.setting)
                checker.add(where, f"cell {cell.label}: {err}")
        if cell.run_id in owners:
            checker.add(raw.loc("variants") if task.variants else raw.loc("task"),
                        f"cells {owners[cell.run_id]} and {cell.label} have identical settings (same run_id)")
        owners.setdefault(cell.run_id, cell.label)
