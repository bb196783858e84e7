"""The ``fabench`` command line: a Typer app whose commands live one module each.

Command modules import only typer and rich at import time; torch and timm are imported inside
command bodies so that ``fabench --help`` answers quickly. Every :class:`FabenchError` raised
by library code becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from fabench import __version__
from fabench.errors import FabenchError

app = typer.Typer(
    name="fabench",
    help="Benchmark feedback-alignment learning rules on deep convolutional networks.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fabench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Benchmark feedback-alignment learning rules on deep convolutional networks."""


def _register_commands() -> None:
    """Import the command modules; each one adds its commands to ``app``."""
    from fabench.cli import commands  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    _register_commands()
    try:
        code = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
    except FabenchError as err:
        print(f"fabench: error: {err}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        print("fabench: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("fabench: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # click usage errors carry their own formatting
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)
