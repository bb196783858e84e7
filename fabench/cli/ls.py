"""``fabench ls rules|archs|datasets|tasks [PATTERN]``: what can be named on the command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from fabench.cli import app

ls_app = typer.Typer(help="List rules, architectures, datasets or tasks.", no_args_is_help=True)
app.add_typer(ls_app, name="ls")


def _print_listing(title: str, rows: list[tuple[str, str]]) -> None:
    """Print name/description pairs as a table on a terminal, tab-separated otherwise."""
    console = Console()
    if not console.is_terminal:
        for name, text in rows:
            typer.echo(f"{name}\t{text}")
        return
    table = Table(title=title)
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, text in rows:
        table.add_row(name, text)
    console.print(table)


PLUGIN_HELP = "A .py file or module whose rules to load (repeatable); installed packages' rules load by themselves."


def _rule_text(cls) -> str:
    """A rule's description, its options and, unless built in, where it comes from."""
    text = cls.description
    if cls.options:
        text += f" (options: {', '.join(o.key + '=' + str(o.default) for o in cls.options)})"
    if cls.source != "built-in":
        text += f" [{cls.source}]"
    return text


@ls_app.command("rules")
def ls_rules(pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'fa-*'."),
             plugin: list[str] = typer.Option([], "--plugin", help=PLUGIN_HELP),
             options: bool = typer.Option(False, "--options", help="Also list each rule's options "
                                          "(--rule-option KEY=VALUE) and defaults.")) -> None:
    """List feedback rules and modifiers with a one-line description each (plugin rules with their file)."""
    from fabench.rules import list_modifiers, list_rules, load_plugins, parse_rule

    load_plugins(plugin)
    describe = (lambda cls: _rule_text(cls)) if options else (
        lambda cls: cls.description + ("" if cls.source == "built-in" else f" [{cls.source}]"))
    rows = [(name, describe(parse_rule(name).base)) for name in list_rules(pattern)]
    rows += [(f"+{name}", describe(parse_rule(f"bp+{name}").modifier_classes[0])) for name in list_modifiers()]
    _print_listing("feedback rules (combine with modifiers: fa-usf-sn+const)", rows)
