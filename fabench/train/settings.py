"""What fabench knows about a run setting besides its type and default: one :class:`Setting`.

Each field of :class:`fabench.train.config.RunConfig` is declared with :func:`setting`, which
stores a ``Setting`` in the field's metadata. Everything that lists settings reads it from there:
the ``fabench run`` options and their help panels, task-file checking, the runs.csv columns, the
table's grouping, the run id and the rule engine's options. Adding a setting is adding one field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Help panels of ``fabench run``, in the order ``--help`` shows them.
PANELS = ("Model and data", "Optimisation", "Rule", "Diagnostics", "Execution")
#: How a setting enters the run id (see RunConfig's docstring):
#: ``always``: hashed whatever its value (the settings of fabench's first run ids; add none);
#: ``changed``: hashed only when it differs from its default (every setting added since);
#: ``never``: where or how visibly a run happens, not what it computes.
IDENTITY_KINDS = ("always", "changed", "never")
#: Where a task file may set a setting: ``setting`` (overrides, variants, when), ``axis`` (set by
#: the task's own keys: rules, archs, ...), ``placement`` (only on the command line).
TASK_FILE_KINDS = ("setting", "axis", "placement")


@dataclass(frozen=True)
class Setting:
    """The metadata of one RunConfig field."""

    help: str
    panel: str
    #: the closed set of values (None stays allowed where the default is None), () when open
    choices: tuple[str, ...] = ()
    identity: str = "changed"
    #: a runs.csv column; every setting in the identity has one, so tables never mix experiments
    column: bool = True
    task_file: str = "setting"
    #: the ``fabench run`` option, e.g. ``--arch-option``; "" derives ``--name-with-dashes``;
    #: None: not an option of ``run`` (set by the task or the grid)
    option: str | None = ""
    #: what ``--help`` shows as the default when the field's own default is not the whole story
    show_default: str | None = None
    #: the name of this setting in the rule engine's options (fabench.rules.RuleOptions)
    rule_option: str | None = None

    def __post_init__(self) -> None:
        if self.panel not in PANELS:
            raise ValueError(f"panel {self.panel!r} is not one of {PANELS}")
        if self.identity not in IDENTITY_KINDS or self.task_file not in TASK_FILE_KINDS:
            raise ValueError(f"identity {self.identity!r} or task_file {self.task_file!r} is not a known kind")
        if self.identity != "never" and not self.column:
            raise ValueError("a setting in the run's identity needs a runs.csv column")


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field carrying a :class:`Setting` (``factory`` for list and dict defaults)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"setting": Setting(**meta)})


def settings_of(cls) -> dict[str, Setting]:
    """Field name -> Setting of a dataclass declared with :func:`setting`, in field order."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls)}


def field_types(cls) -> dict[str, str]:
    """Field name -> its annotation as text, e.g. ``'int | None'`` (for task-file checks)."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def field_defaults(cls) -> dict[str, Any]:
    """Field name -> its default value (a fresh one for list and dict fields)."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def option_name(name: str, meta: Setting) -> str | None:
    """The ``fabench run`` option of a field: ``--batch-size`` for batch_size."""
    if meta.option is None:
        return None
    return meta.option or "--" + name.replace("_", "-")
