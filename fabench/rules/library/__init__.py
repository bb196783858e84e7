"""fabench's built-in rules and modifiers, one module per rule or group of closely related rules.

Every module here is imported when :mod:`fabench.rules` is, so a built-in rule is added by
adding a module (and its row in docs/writing-rules.md's table); its ``@register_rule`` does the rest.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_all() -> None:
    """Import every module of this package (each registers its rules)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")
