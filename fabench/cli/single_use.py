"""Commands whose single-valued options may be given once.

click keeps the last of ``--seed 1 --seed 2`` in silence; a run that is not the one the user
typed is worse than an error, so ``run``, ``eval``, ``grid`` and ``validate`` refuse it.
"""

from __future__ import annotations

from typer.core import TyperCommand

from fabench.errors import FabenchError


def refuse_repeated_options(command, args: list[str]) -> None:
    """Refuse a single-valued option given twice (``--seed 1 --seed 2``): click would keep the
    last one in silence. Repeatable options (``--exclude``) may repeat."""
    single = {}
    for param in command.params:
        if getattr(param, "multiple", True) or not hasattr(param, "secondary_opts"):
            continue
        for opt in (*param.opts, *param.secondary_opts):
            single[opt] = param
    seen: dict = {}
    takes_value = False
    for token in args:
        if takes_value:  # the value of the option before it, whatever it looks like
            takes_value = False
            continue
        if token == "--":
            break
        flag = token.partition("=")[0] if token.startswith("--") else token
        param = single.get(flag)
        if param is None:
            continue
        takes_value = not param.is_flag and flag == token
        if param.name in seen:
            first = seen[param.name]
            twice = f"{flag} is given twice" if flag == first else f"{first} and {flag} are both given"
            raise FabenchError(f"{twice}; give one")
        seen[param.name] = flag


class SingleUseCommand(TyperCommand):
    """A command whose single-valued options may be given once (see refuse_repeated_options)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        refuse_repeated_options(self, args)
        return super().parse_args(ctx, args)
