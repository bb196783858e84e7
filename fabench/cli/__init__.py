"""The ``fabench`` command line: a Typer app whose commands live one module each.

Command modules import only typer and rich at import time; torch and timm are imported inside
command bodies so that ``fabench --help`` answers quickly. Every :class:`FabenchError` raised
by library code becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from fabench import __version__
from fabench._allocator import keep_freed_memory
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


#: click's exception base class as typer uses it: click's own for typer < 0.23, the copy typer
#: vendors (``typer._click``) in newer releases. Found through typer's public BadParameter, so
#: the CLI catches the class typer really raises, whichever click is installed beside it.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _PipeSafeStream:
    """stdout that turns into a sink when the reader goes away (``fabench run ... | head -1``).

    The run keeps going and still writes its records; only the printing stops.
    """

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._stream = open(os.devnull, "w")  # noqa: SIM115

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _usage_error_line(err) -> str:
    """One line for a click usage error: its message and where to read the usage."""
    ctx = getattr(err, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = err.format_message().strip().splitlines()[-1].replace("Value error, ", "")  # typer's validator prefix
    return f"fabench: error: {message}{where}"


def _fail(message: str, code: int = 2) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    keep_freed_memory()
    if not isinstance(sys.stdout, _PipeSafeStream):
        sys.stdout = _PipeSafeStream(sys.stdout)
    _register_commands()
    try:
        code = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
    except FabenchError as err:
        _fail(f"fabench: error: {err}")
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        _fail("fabench: aborted", 130)
    except KeyboardInterrupt:
        _fail("fabench: interrupted", 130)
    except ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare group: its help, then one line
            print(err.format_message())
            _fail(f"fabench: error: '{err.ctx.command_path}' needs a command; one of those above")
        _fail(_usage_error_line(err), 2 if err.exit_code == 1 else err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
