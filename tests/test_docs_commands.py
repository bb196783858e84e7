"""Every command the README and the documentation show runs, so the two cannot drift from the code.

The fenced code blocks of ``README.md`` and ``docs/**/*.md`` are read:

- in shell blocks, each command that starts with ``fabench`` or ``make`` (continuation lines
  joined, comments dropped, ``&&`` chains split) runs through the installed entry point in a
  cheap form: ``make T`` as ``make -n T``; ``fabench run`` for one epoch on 64 images, without
  ``--compile``; ``fabench grid`` with ``--dry-run``; task commands on shrunk copies of the task
  files (one epoch on 256 images, one tuning trial on one seed); a dataset that needs a download replaced
  by the embedded sample of the same kind, and a CUDA device by the CPU where none is present;
- ``python`` blocks run as scripts, after every block titled with a file name
  (```` ```python title="my_rule.py" ````) is saved under that name for the others to import;
  an excerpt that is not a whole program belongs in a ``py`` block, which is shown, not run;
- YAML blocks that define a task (``task:``) are checked by ``fabench validate``.

Commands run in a temporary folder, so their results never land in the repository; tables and
plots read tiny runs made beforehand for each task they name, and ``tune --show`` and
``grid --tuned`` a one-trial tuning of the shrunk task.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FABENCH = str(Path(sys.executable).with_name("fabench"))
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```\s*([\w+-]*)\s*(.*)$")
TITLE = re.compile(r'title="([^"]+)"')
#: Datasets that need a download, and the embedded sample of the same kind that stands in.
OFFLINE_TWIN = {"cifar10": "cifar10-mini", "cifar100": "cifar10-mini", "mnist": "mnist-mini",
                "fashion-mnist": "mnist-mini"}
#: What every `fabench run` is cut to, in place of the documented values.
CHEAP_RUN = {"--epochs": "1", "--subset": "64", "--batch-size": "32"}
#: Switches the cheap form drops, and the one it adds in their place.
CHEAP_FLAGS = ({"--compile", "--no-compile", "--progress", "--no-progress"}, ["--no-compile", "--no-progress"])
#: No command of this test downloads anything.
ENV = {**os.environ, "FABENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 600


@dataclass(frozen=True)
class Snippet:
    """One runnable thing the documentation shows, and where it first appears."""

    kind: str  # "shell", "python" or "task"
    text: str
    where: str
    title: str = ""  # a block's file name (```python title="my_rule.py"```), for blocks that import it

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_blocks(path: Path):
    """(language, title, first line number, text) of every fenced block in ``path``."""
    language, title, start, lines = None, "", 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line.strip())
        if language is None and fence:
            named = TITLE.search(fence.group(2))
            language, title, start, lines = fence.group(1), named.group(1) if named else "", number + 1, []
        elif language is not None and line.strip() == "```":
            yield language, title, start, textwrap.dedent("\n".join(lines))
            language = None
        elif language is not None:
            lines.append(line)


def shell_commands(text: str) -> list[str]:
    """The ``fabench`` and ``make`` commands of a shell block, one string each."""
    commands, joined = [], text.replace("\\\n", " ")
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            head, words = (words[:words.index("&&")], words[words.index("&&") + 1:]) if "&&" in words else (words, [])
            if head and Path(head[0]).name in ("fabench", "make"):
                commands.append(shlex.join([Path(head[0]).name, *head[1:]]))
    return commands


def snippets() -> list[Snippet]:
    found: dict[tuple[str, str], Snippet] = {}
    for path in doc_files():
        for language, title, line, text in code_blocks(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if language in SHELL_LANGUAGES:
                items = [("shell", command) for command in shell_commands(text)]
            elif language == "python":
                items = [("python", text)]
            elif language == "yaml" and re.search(r"^task:", text, re.M):
                items = [("task", text)]
            else:
                items = []
            for kind, body in items:
                found.setdefault((kind, body), Snippet(kind, body, where, title if kind == "python" else ""))
    return list(found.values())


SNIPPETS = snippets()


def option(words: list[str], name: str) -> str | None:
    """The value of ``name`` in ``words`` (``--name value`` or ``--name=value``), last one wins."""
    value = None
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def with_option(words: list[str], name: str, value: str) -> list[str]:
    """``words`` with ``name`` set to ``value`` (an option may be given once only)."""
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == name:
            skip = True
        elif not word.startswith(name + "="):
            kept.append(word)
    return [*kept, name, value]


def task_of(words: list[str]) -> str | None:
    """The task a ``fabench`` command works on: grid/tune's argument, or table/plot's --task."""
    if words[1] in ("grid", "tune"):
        return next((w for w in words[2:] if not w.startswith("-")), None)
    return option(words, "--task")


# ---------------------------------------------------------------------------------------------
# The workspace: shrunk task files and the runs that the tables and plots read.


def shrink_task(text: str) -> str:
    """A task file cut to one epoch on 256 images and one tuning trial on one seed."""
    task = yaml.safe_load(text)
    overrides = task.setdefault("overrides", {})
    overrides.update({"epochs": 1, "subset": 256})
    if "val_split" in overrides:
        overrides["val_split"] = 100
    settings = [entry.get("set", {}) for entry in task.get("when", []) or []]
    for group in [*settings, *(task.get("variants") or {}).values()]:
        group.pop("epochs", None)
        if group.get("val_split"):
            group["val_split"] = 100
    tune = task.get("tune") or {}
    tune.update({"trials": 1, "seeds": 1, "val_split": 100, "epochs": 1})
    task["tune"] = tune
    return yaml.safe_dump(task, sort_keys=False)


def fabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FABENCH, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)


def must(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _fabench_words() -> list[list[str]]:
    return [s.words for s in SNIPPETS if s.kind == "shell" and s.words[0] == "fabench" and len(s.words) > 1]


#: Tasks whose tables compare rules over paired seeds (``--vs``): their runs need two seeds.
PAIRED = {task_of(w) for w in _fabench_words() if w[1] == "table" and "--vs" in w}
_PREPARED: set[tuple[Path, str, str]] = set()


def ensure_runs(home: Path, task: str) -> None:
    """Tiny runs filed under ``task`` (bp and fa; two seeds where a table pairs them), once."""
    if (home, task, "runs") in _PREPARED:
        return
    cheap = [word for item in CHEAP_RUN.items() for word in item]
    for rule in ("bp", "fa"):
        for seed in ("0", "1") if task in PAIRED else ("0",):
            must(fabench("run", "--task", task, "--rule", rule, "--seed", seed, "--arch", "lenet",
                         "--dataset", "mnist-mini", *cheap, "--no-progress", cwd=home))
    _PREPARED.add((home, task, "runs"))


def ensure_tuned(home: Path, task: str) -> None:
    """A tuning of the shrunk ``task`` (one trial per cell), once."""
    if (home, task, "tuned") in _PREPARED:
        return
    must(fabench("tune", task, "--tasks-dir", str(home / "tasks"), "--workers", "1", cwd=home))
    _PREPARED.add((home, task, "tuned"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A working folder holding ``tasks/``, shrunk copies of the shipped task files."""
    home = tmp_path_factory.mktemp("docs")
    tasks = home / "tasks"
    tasks.mkdir()
    for source in (ROOT / "tasks").glob("*.yaml"):
        text = source.read_text(encoding="utf-8")
        (tasks / source.name).write_text(text if source.name.startswith("_") else shrink_task(text))
    return home


# ---------------------------------------------------------------------------------------------
# Cheap forms.


def cheap_fabench(words: list[str], home: Path) -> list[str]:
    """``words`` (a documented ``fabench`` command) in the form this test runs."""
    command, args = words[1], list(words[2:])
    if command == "run":
        dataset = option(args, "--dataset")
        if dataset in OFFLINE_TWIN:
            args = with_option(args, "--dataset", OFFLINE_TWIN[dataset])
        if (option(args, "--device") or "").startswith("cuda") and not _cuda():
            args = with_option(args, "--device", "cpu")
        for name, value in CHEAP_RUN.items():
            args = with_option(args, name, value)
        dropped, added = CHEAP_FLAGS
        return [FABENCH, command, *(a for a in args if a not in dropped), *added]
    if command in ("grid", "tune", "validate") or (command == "ls" and args[:1] == ["tasks"]):
        args += ["--tasks-dir", str(home / "tasks")] if option(args, "--tasks-dir") is None else []
    if command == "grid" and "--dry-run" not in args:
        args.append("--dry-run")
    return [FABENCH, command, *args]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_snippet(snippet: Snippet, home: Path) -> subprocess.CompletedProcess:
    if snippet.kind == "python":
        for named in (s for s in SNIPPETS if s.title):
            (home / named.title).write_text(named.text, encoding="utf-8")
        script = home / "snippet.py"
        script.write_text(snippet.text, encoding="utf-8")
        return subprocess.run([sys.executable, str(script)], cwd=home, env=ENV, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    if snippet.kind == "task":
        folder = home / "doc-tasks"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "doc-task.yaml").write_text(snippet.text, encoding="utf-8")
        return fabench("validate", "--tasks-dir", str(folder), cwd=home)
    words = snippet.words
    if words[0] == "fabench" and words[1:2] in (["table"], ["plot"]) and task_of(words):
        ensure_runs(home, task_of(words))
    if words[0] == "fabench" and ("--show" in words or "--tuned" in words) and task_of(words):
        ensure_tuned(home, task_of(words))
    if words[0] == "make":
        return subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    return subprocess.run(cheap_fabench(words, home), cwd=home, env=ENV, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def test_the_documentation_shows_commands():
    """The extraction itself: the README's first run, its API snippet and a make target are found."""
    shell = {s.text for s in SNIPPETS if s.kind == "shell"}
    assert "fabench run --rule fa-usf-sn --arch lenet --dataset mnist-mini --epochs 1" in shell
    assert "make demo" in shell
    assert any(s.kind == "python" and "begin_training" in s.text and s.where.startswith("README.md")
               for s in SNIPPETS)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"{s.where}:{s.kind}" for s in SNIPPETS])
def test_documented_snippet_runs(snippet: Snippet, workspace: Path):
    done = run_snippet(snippet, workspace)
    assert done.returncode == 0, (f"{snippet.where}: `{snippet.text}` exited {done.returncode}\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
