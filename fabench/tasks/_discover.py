"""Finding task files: which folders are searched, and looking a task up by name.

Search path (the first folder holding a task name wins):

1. the folders given with ``--tasks-dir`` (these replace the defaults below);
2. ``./tasks`` in the working directory;
3. the ``tasks/`` folder of the source tree this package was imported from (a git checkout or
   an editable install, ``pip install -e .``), so ``fabench grid smoke`` works from anywhere.

A wheel installed from PyPI carries no ``tasks/`` folder; pass ``--tasks-dir`` (or run from a
folder holding ``tasks/``). Every ``*.yaml``/``*.yml`` file in a task folder is a task, except
files whose name starts with ``_``: those are fragments, only meant to be included. A file
that fails to read is reported, never skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fabench.errors import FabenchError, unknown_choice
from fabench.tasks._source import Location, Problem, TaskFileError, display_path, read_task_file
from fabench.tasks._spec import Task, build_task


def source_tree_tasks_dir() -> Path | None:
    """The ``tasks/`` folder beside the package in a source checkout, if there is one."""
    import fabench

    root = Path(fabench.__file__).resolve().parent.parent
    candidate = root / "tasks"
    return candidate if candidate.is_dir() and (root / "pyproject.toml").is_file() else None


def task_dirs(explicit: Sequence[Path | str] | None = None) -> list[Path]:
    """The folders searched for task files, in precedence order (see the module doc)."""
    if explicit:
        missing = [str(d) for d in explicit if not Path(d).is_dir()]
        if missing:
            raise FabenchError(f"--tasks-dir {missing[0]} is not a folder")
        candidates = [Path(d) for d in explicit]
    else:
        candidates = [Path.cwd() / "tasks", source_tree_tasks_dir()]
    dirs: list[Path] = []
    for folder in candidates:
        if folder is not None and folder.is_dir() and folder.resolve() not in {d.resolve() for d in dirs}:
            dirs.append(folder)
    return dirs


def task_files(dirs: Iterable[Path], *, fragments: bool = False) -> list[Path]:
    """The YAML files in ``dirs`` (sorted per folder); fragments (``_*.yaml``) only if asked."""
    files = []
    for folder in dirs:
        found = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        files += [p for p in found if fragments or not p.name.startswith("_")]
    return files


def is_fragment(path: Path) -> bool:
    """True for files only meant to be included (name starts with '_')."""
    return Path(path).name.startswith("_")


@dataclass
class FileReport:
    """The outcome of reading and validating one file."""

    path: Path
    task: Task | None
    problems: list[Problem] = field(default_factory=list)


def check_file(path: Path) -> FileReport:
    """Read and fully validate one task file (rules, archs, datasets, settings, cells)."""
    try:
        raw = read_task_file(path)
    except TaskFileError as err:
        return FileReport(Path(path), None, err.problems)
    task, problems = build_task(raw, fragment=is_fragment(path))
    return FileReport(Path(path), task, problems)


def duplicate_names(reports: Iterable[FileReport]) -> list[Problem]:
    """Problems for task names defined by more than one file in the same search."""
    first: dict[str, Path] = {}
    problems = []
    for report in reports:
        if report.task is None:
            continue
        name = report.task.name
        if name in first and first[name].parent.resolve() == report.path.parent.resolve():
            problems.append(Problem(Location(report.path, 1), f"task '{name}' is also defined in {display_path(first[name])}"))
        first.setdefault(name, report.path)
    return problems


def scan(dirs: Sequence[Path], *, fragments: bool = False) -> list[FileReport]:
    """Check every task file in ``dirs``; duplicate task names within a folder are problems.

    A name defined in two different folders is not a problem: the earlier folder wins,
    as ``PATH`` does for programs.
    """
    reports = [check_file(p) for p in task_files(dirs, fragments=fragments)]
    by_path = {r.path: r for r in reports}
    for problem in duplicate_names(reports):
        by_path[problem.where.path].problems.append(problem)
    return reports


def visible_tasks(reports: Iterable[FileReport]) -> list[Task]:
    """The valid tasks, the first of equal names winning."""
    seen: dict[str, Task] = {}
    for report in reports:
        if report.task is not None and not report.problems:
            seen.setdefault(report.task.name, report.task)
    return list(seen.values())


def _quick_name(path: Path) -> str | None:
    """The ``task:`` value of a file, after includes, without full validation (None if unreadable)."""
    try:
        value = read_task_file(path).data.get("task")
    except TaskFileError:
        return None
    return value if isinstance(value, str) else None


def load_task(name_or_path: str | Path, dirs: Sequence[Path] | None = None) -> Task:
    """Find a task by name (or a path to its file) and validate it fully.

    Raises TaskFileError (file:line) if the task's file is invalid, and FabenchError naming the
    known tasks, and any file that could not be read, if the name is not found.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        path = candidate
    else:
        dirs = task_dirs() if dirs is None else dirs
        files = task_files(dirs)
        names = {f: _quick_name(f) for f in files}
        matches = [f for f, n in names.items() if n == str(name_or_path)]
        if not matches:
            broken = [display_path(f) for f, n in names.items() if n is None]
            error = unknown_choice("task", str(name_or_path), [n for n in names.values() if n])
            where = ", ".join(display_path(d) for d in dirs) or "no tasks/ folder found; pass --tasks-dir"
            hint = f"; unreadable task files: {', '.join(broken)} (run `fabench validate`)" if broken else ""
            raise FabenchError(f"{error} (searched {where}){hint}")
        path = matches[0]
        twins = [m for m in matches[1:] if m.parent.resolve() == path.parent.resolve()]
        if twins:
            raise TaskFileError([Problem(Location(twins[0], 1), f"task '{name_or_path}' is also defined in {display_path(path)}")])
    report = check_file(path)
    if report.problems:
        raise TaskFileError(report.problems)
    if report.task is None:
        raise FabenchError(f"{display_path(path)} is a fragment (its name starts with '_'); name a task that includes it")
    return report.task
