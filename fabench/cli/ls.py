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


@ls_app.command("rules")
def ls_rules(pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'fa-*'.")) -> None:
    """List feedback rules and modifiers with a one-line description each."""
    from fabench.rules import list_modifiers, list_rules

    rows = list(list_rules(pattern).items()) + [
        (f"+{name}", text) for name, text in list_modifiers().items()
    ]
    _print_listing("feedback rules (combine with modifiers: fa-usf-sn+const)", rows)
