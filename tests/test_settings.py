"""One definition per setting: RunConfig's fields and what is generated from them.

``fabench run --help`` groups the options into panels and lists every closed set; the parser
refuses a value outside one (the bad-input matrix in test_cli_errors); a setting added later,
at a default that keeps the old behaviour, changes no run id.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fabench.train.config import SETTINGS, RunConfig
from fabench.train.settings import PANELS, setting

REPO = Path(__file__).resolve().parents[1]
OLD_TASK = REPO / "tests" / "fixtures" / "old-release" / "old-release.yaml"


@dataclass
class WithANewSetting(RunConfig):
    """RunConfig as it would be with one more setting, declared the way every setting is."""

    dampening: float = setting(0.0, panel="Optimisation", help="SGD momentum dampening.")


def _help(width: int) -> str:
    env = {**os.environ, "COLUMNS": str(width), "TERM": "dumb", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "fabench", "run", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _panel_titles(text: str) -> list[str]:
    return re.findall(r"╭─ (.+?) ─", text)


def test_run_help_groups_the_options_into_panels():
    assert _panel_titles(_help(80)) == ["Options", *PANELS]


def test_run_help_lists_every_choice_of_every_closed_setting():
    text = _help(400)
    closed = {name: meta.choices for name, meta in SETTINGS.items() if meta.choices}
    assert {"optimizer", "schedule", "amp", "sn_norm", "ei_mode", "mirror_every", "weight_init"} <= set(closed)
    for name, choices in closed.items():
        option = "--" + name.replace("_", "-")
        line = next(line for line in text.splitlines() if re.match(rf"│ {option}\s", line))
        assert all(choice in line for choice in choices), (option, line)


def test_a_new_setting_at_its_default_changes_no_run_id():
    from fabench.tasks import load_task

    configs = [RunConfig(), RunConfig(rule="fa", optimizer="sgd", lr=0.1, exclude=["fc*"], tuned="s#3"),
               *(cell.config for cell in load_task(OLD_TASK).cells())]
    for config in configs:
        assert WithANewSetting(**config.to_dict()).run_id == config.run_id
    for config in configs:
        assert WithANewSetting(**config.to_dict(), dampening=0.5).run_id != config.run_id

