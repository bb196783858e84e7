"""Plugins: rules defined outside fabench, in a file (``--plugin my_rule.py``), an importable module
(``--plugin mypkg.rules``) or an installed package's entry point (group ``fabench.rules``).

Loading a plugin imports it once per process; its ``@register_rule`` classes then work
everywhere a built-in does. Every process that builds a run (grid workers, DDP ranks, SLURM
array tasks, a resumed run) loads the run's plugins from its settings before it parses the
rule, so plugins need no other set-up. A plugin's content hash (SHA-256 of the file; of every
``.py`` file of a package) is part of the run's identity and manifest: an edited plugin never
reuses an old result. A plugin that fails to import, or defines a rule badly, is refused with
one line naming it and the problem.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from fabench.errors import FabenchError
from fabench.rules import _base

ENTRY_POINT_GROUP = "fabench.rules"
#: resolved file path or module name -> content hash of what was imported
_loaded: dict[str, str] = {}
_entry_points_done = False


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _sha256_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _file_of(spec: str, base_dir: str | Path | None) -> Path:
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise FabenchError(f"plugin {spec}: no such file ({path.resolve()}); give a .py file or an importable "
                           "module such as mypkg.rules")
    return path.resolve()


def _module_files(name: str, what: str) -> list[Path]:
    """The source files of module ``name`` (a package: all its .py files), without importing it."""
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as error:
        raise FabenchError(f"{what}: cannot be imported ({type(error).__name__}: {error})") from None
    if found is None or found.origin is None or not Path(found.origin).is_file():
        raise FabenchError(f"{what}: no such module; give a .py file or an importable module such as mypkg.rules")
    origin = Path(found.origin)
    if found.submodule_search_locations:
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


@contextmanager
def _provenance(source: str, sha256: str):
    _base._loading.update(source=source, sha256=sha256)
    try:
        yield
    finally:
        _base._loading.clear()


def _problem(error: BaseException, file: Path | None) -> str:
    """``Kind: message (line N)``: the error and where in the plugin it arose."""
    line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
    if line is None and file is not None:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == file]
        line = frames[-1].lineno if frames else None
    text = str(error).splitlines()[0] if str(error) else ""
    kind = "" if isinstance(error, FabenchError) else f"{type(error).__name__}: "
    return f"{kind}{text}" + (f" (line {line})" if line else "")


def _run_import(what: str, source: str, sha256: str, file: Path | None, action) -> None:
    try:
        with _provenance(source, sha256):
            action()
    except (Exception, SystemExit) as error:  # a plugin's own bug must not become a traceback
        raise FabenchError(f"{what}: {_problem(error, file)}") from None


def _load_file(spec: str, base_dir) -> str:
    path = _file_of(spec, base_dir)
    sha256 = _sha256_files([path])
    key = str(path)
    if _loaded.get(key) == sha256:
        return sha256
    name = "fabench_plugin_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # classes pickle and dataclasses resolve through sys.modules

    def execute() -> None:
        module_spec.loader.exec_module(module)

    try:
        _run_import(f"plugin {spec}", f"plugin {path}", sha256, path, execute)
    except FabenchError:
        sys.modules.pop(name, None)
        raise
    _loaded[key] = sha256
    return sha256


def _load_module(spec: str) -> str:
    files = _module_files(spec, f"plugin {spec}")
    sha256 = _sha256_files(files)
    if _loaded.get(spec) == sha256:
        return sha256
    _run_import(f"plugin {spec}", f"plugin module {spec}", sha256, files[0], lambda: importlib.import_module(spec))
    _loaded[spec] = sha256
    return sha256


def load_plugins(specs, base_dir: str | Path | None = None) -> dict[str, str]:
    """Import each plugin (a ``.py`` path, relative to ``base_dir`` or the working folder, or a
    module name) once per process; return each one's content hash by the spec given."""
    hashes = {}
    for spec in specs or ():
        spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
        if not isinstance(spec, str) or not spec.strip():
            raise FabenchError(f"--plugin takes a .py file or a module name such as mypkg.rules, got {spec!r}")
        spec = spec.strip()
        hashes[spec] = _load_file(spec, base_dir) if _is_path(spec) else _load_module(spec)
    return hashes


def load_entry_points() -> None:
    """Import the rules installed packages declare in entry-point group ``fabench.rules`` (once)."""
    global _entry_points_done
    if _entry_points_done:
        return
    _entry_points_done = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        module = point.value.split(":")[0].strip()
        what = f"entry point {point.name} = {point.value} (group {ENTRY_POINT_GROUP})"
        files = _module_files(module, what)
        _run_import(what, f"entry point {point.name} ({point.value})", _sha256_files(files), files[0], point.load)


def absolute_plugins(specs, base_dir: str | Path | None = None) -> tuple[str, ...]:
    """``specs`` with each file made an absolute path (module names as they are), so that worker
    processes and cluster jobs started elsewhere find the same files."""
    specs = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in specs or ()]
    return tuple(str(_file_of(spec, base_dir)) if _is_path(spec) else spec for spec in specs)
