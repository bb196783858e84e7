"""What a run's identity adds for rules from outside fabench: the content of the files that define them."""

from __future__ import annotations

from fabench.rules._plugins import load_plugins
from fabench.rules._spec import parse_rule


def plugin_identity(rule: str, plugins) -> dict:
    """What a run's identity adds for plugins: each listed plugin's content hash (``plugins``), and
    the hash of the file that defines each non-built-in part of ``rule`` (``rule_source``); {} when
    neither applies, so runs of built-in rules keep their identity."""
    identity = {}
    if plugins:
        identity["plugins"] = sorted(load_plugins(plugins).values())
    sources = {part.name: part.source_sha256 for part in parse_rule(rule).parts if part.source_sha256}
    if sources:
        identity["rule_source"] = sources
    return identity
