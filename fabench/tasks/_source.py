"""Reading task files: YAML with line numbers, and ``include:`` resolution.

Every value read from a task file keeps the file and line it came from, so that any error
found later (an unknown rule, a bad override) can name ``file:line``. The YAML is composed
into a node tree with PyYAML's safe loader (the nodes carry marks), then constructed with the
same safe loader; nothing in a task file can run code.

Includes: ``include: base.yaml`` (or a list, merged in order) is read relative to the including
file. The including file's keys win. ``overrides`` and ``variants`` are merged one level deep
(a local key replaces the included key of the same name); ``when`` lists are concatenated,
included entries first, so local conditional settings apply last; every other key is replaced
whole. A file that includes itself, directly or through others, is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.reader import ReaderError

from fabench._paths import display_path
from fabench.errors import FabenchError


@dataclass(frozen=True)
class Location:
    """A file and a 1-based line, printed as ``file:line`` (relative to CWD when shorter)."""

    path: Path
    line: int

    def __str__(self) -> str:
        return f"{display_path(self.path)}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a task file, and where."""

    where: Location
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class TaskFileError(FabenchError):
    """One or more problems in task files; the message is the first, with a count of the rest."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''}; run `fabench validate`)" if more else ""
        super().__init__(f"{self.problems[0]}{tail}")


@dataclass
class RawTask:
    """A task file's mapping after includes, with the location of every key and item.

    ``where`` maps a key path such as ``("overrides", "lr")`` or ``("rules", 3)`` to the
    location it was read from (which may be an included file).
    """

    path: Path
    data: dict[str, Any]
    where: dict[tuple, Location] = field(default_factory=dict)

    def loc(self, *keys: Any) -> Location:
        """Location of the deepest known prefix of ``keys`` (the file's first line at worst)."""
        for end in range(len(keys), -1, -1):
            found = self.where.get(tuple(keys[:end]))
            if found is not None:
                return found
        return Location(self.path, 1)


def _record_lines(node: yaml.Node, prefix: tuple, lines: dict[tuple, int], problems: list[str]) -> None:
    """Walk a composed node tree, noting the line of every key and item; flag duplicate keys.

    PyYAML keeps the last of two equal keys silently; a task file with a repeated key is
    almost certainly a mistake, so it is reported instead.
    """
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value
            if key in seen:
                problems.append(f"{key_node.start_mark.line + 1}\tduplicate key '{key}'")
            seen.add(key)
            lines[(*prefix, key)] = key_node.start_mark.line + 1
            _record_lines(value_node, (*prefix, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*prefix, index), lines, problems)


#: The most values a task file may stand for once its aliases (``*name``) are followed. The
#: shipped tasks hold under 200; a few hundred bytes of nested aliases (an "alias bomb") can
#: stand for billions, which would take minutes and gigabytes to walk.
MAX_EXPANDED_VALUES = 10_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int], too_big: list[yaml.Node]) -> int:
    """How many nodes ``node`` stands for with every alias followed, counted without following
    them (each node once, memoised in ``sizes``); the first node over the limit goes in ``too_big``."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, too_big) + _expanded_size(v, sizes, too_big) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes, too_big) for item in node.value)
    if size > MAX_EXPANDED_VALUES and not too_big:
        too_big.append(node)
    sizes[id(node)] = min(size, MAX_EXPANDED_VALUES + 1)
    return sizes[id(node)]


def _check_expansion(node: yaml.Node, path: Path) -> None:
    """Refuse a file whose aliases expand past :data:`MAX_EXPANDED_VALUES`, before anything walks it."""
    too_big: list[yaml.Node] = []
    _expanded_size(node, {}, too_big)
    if too_big:
        line = too_big[0].start_mark.line + 1
        raise TaskFileError([Problem(Location(path, line), f"invalid YAML: its aliases (*name) expand to more than "
                                                           f"{MAX_EXPANDED_VALUES} values; write the values out or use include:")])


def _reader_problem(path: Path, text: str, err: ReaderError) -> Problem:
    """The problem for a character YAML does not allow (NUL, other control characters, ...), at its line."""
    code = err.character if isinstance(err.character, int) else ord(err.character)
    line = text.count("\n", 0, err.position) + 1
    return Problem(Location(path, line), f"invalid YAML: non-printable character U+{code:04X} (a NUL or other control character) is not allowed")


def parse_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """Safely load one YAML file; return its data and the line of each key path.

    Raises :class:`TaskFileError` naming the line for syntax errors, duplicate keys, non-printable
    characters, aliases that expand too far, nesting too deep, an unreadable file or an empty one.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TaskFileError([Problem(Location(path, 1), f"cannot read task file: {err}")]) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise TaskFileError([Problem(Location(path, 1), "empty task file; expected keys such as task:, rules:, archs:")])
        _check_expansion(node, path)
        lines: dict[tuple, int] = {}
        duplicates: list[str] = []
        _record_lines(node, (), lines, duplicates)
        if duplicates:
            raise TaskFileError([Problem(Location(path, int(n)), msg) for n, msg in (d.split("\t") for d in duplicates)])
        data = loader.construct_document(node)
    except ReaderError as err:
        raise TaskFileError([_reader_problem(path, text, err)]) from None
    except RecursionError:
        raise TaskFileError([Problem(Location(path, 1), "invalid YAML: nested too deeply")]) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        context = err.context or ""
        if context and err.context_mark is not None and err.context_mark.line + 1 != line:
            context += f" (opened on line {err.context_mark.line + 1})"
        what = ", ".join(p for p in (context, err.problem) if p)
        raise TaskFileError([Problem(Location(path, line), f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as err:
        raise TaskFileError([Problem(Location(path, 1), f"invalid YAML: {err}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _without_prefix(where: dict[tuple, Location], prefix: tuple) -> dict[tuple, Location]:
    """Drop the locations at or below ``prefix`` (their value was replaced)."""
    n = len(prefix)
    return {k: v for k, v in where.items() if k[:n] != prefix}


def merge_raw(base: RawTask, top: RawTask) -> RawTask:
    """Merge an included task (``base``) under an including one (``top``); see the module doc."""
    data = dict(base.data)
    where = dict(base.where)
    shifted_when: dict[tuple, Location] | None = None
    for key, value in top.data.items():
        below = data.get(key)
        if key in ("overrides", "variants") and isinstance(value, dict) and isinstance(below, dict):
            data[key] = {**below, **value}
            for sub in value:
                where = _without_prefix(where, (key, sub))
        elif key == "when" and isinstance(value, list) and isinstance(below, list):
            data[key] = below + value
            shift = len(below)
            shifted_when = {
                ("when", path[1] + shift, *path[2:]): loc
                for path, loc in top.where.items()
                if path[:1] == ("when",) and len(path) > 1
            }
        else:
            data[key] = value
            where = _without_prefix(where, (key,))
    for path, loc in top.where.items():
        if shifted_when is not None and path[:1] == ("when",) and len(path) > 1:
            continue  # added below at their shifted indices
        where[path] = loc
    where.update(shifted_when or {})
    return RawTask(top.path, data, where)


def _include_targets(raw: RawTask) -> list[tuple[str, Location]]:
    """The files named by ``include:`` with the location of each name."""
    spec = raw.data.get("include")
    if isinstance(spec, str):
        return [(spec, raw.loc("include"))]
    if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
        return [(s, raw.loc("include", i)) for i, s in enumerate(spec)]
    raise TaskFileError([Problem(raw.loc("include"), "include must be a file name or a list of file names, relative to this file")])


def read_task_file(path: Path, _stack: tuple[Path, ...] = ()) -> RawTask:
    """Read a task file and everything it includes; raise :class:`TaskFileError` on any problem."""
    path = Path(path)
    data, lines = parse_yaml(path)
    where = {key: Location(path, line) for key, line in lines.items()}
    if not isinstance(data, dict):
        raise TaskFileError([Problem(Location(path, lines.get((), 1)), "a task file must be a mapping of keys (task:, rules:, archs:, ...)")])
    raw = RawTask(path, data, where)
    if "include" not in data:
        return raw
    here = path.resolve()
    base: RawTask | None = None
    for name, loc in _include_targets(raw):
        target = (path.parent / name).resolve()
        chain = (*_stack, here)
        if target in chain:
            cycle = " -> ".join(p.name for p in (*chain[chain.index(target):], target))
            raise TaskFileError([Problem(loc, f"include cycle: {cycle}")])
        if not target.is_file():
            raise TaskFileError([Problem(loc, f"included file '{name}' not found (looked for {target})")])
        included = read_task_file(target, chain)
        base = included if base is None else merge_raw(base, included)
    local = RawTask(path, {k: v for k, v in data.items() if k != "include"}, _without_prefix(where, ("include",)))
    return merge_raw(base, local) if base is not None else local
