"""``fabench run`` (one training run) and ``fabench eval`` (a trained run on another dataset).

The ``run`` options are generated from :class:`RunConfig`'s settings (their help, choices and
help panel; :mod:`fabench.train.settings`): each sets the field of the same name, and an option
left out keeps RunConfig's default. The optimizer, learning rate, momentum, weight decay and
forward init left out are filled by the run's recipe (``fabench.train.recipes``: per
architecture and rule family, then per optimizer), which the run prints in its header and
records in its manifest.

Exit codes: 0 for a finished (or already finished) or diverged run (divergence is a result),
2 for bad input (one line on stderr, nothing written), 130 for a run stopped by Ctrl-C after
saving a checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from fabench.cli import app
from fabench.cli.choices import choice_type, plain
from fabench.cli.single_use import SingleUseCommand
from fabench.errors import FabenchError
from fabench.train.config import SETTINGS, RunConfig, key_values
from fabench.train.settings import PANELS, Setting, field_defaults, field_types, option_name

EXIT_INTERRUPTED = 130
_DEFAULTS = field_defaults(RunConfig)
_TYPES = field_types(RunConfig)


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FabenchError(f"{option} takes comma-separated integers, e.g. 30,60; got '{text}'") from None


def _patterns(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _cli_type(name: str, meta: Setting) -> Any:
    """The option's type as typer reads it, from the field's annotation (lists and mappings are
    repeatable options; ``list[int]`` is one comma-separated value)."""
    kind = _TYPES[name].split("|")[0].strip()
    item = choice_type(name.title().replace("_", ""), meta.choices) if meta.choices else str
    if kind == "list[int]":
        return str
    if kind.startswith(("list[", "tuple[", "dict[")):
        return list[item]
    return {"int": int, "float": float, "bool": bool}.get(kind, item)


def _show_default(name: str, meta: Setting) -> str | bool:
    if meta.show_default is not None:
        return meta.show_default
    default = _DEFAULTS[name]
    return False if default in (None, "", [], (), {}) or isinstance(default, bool) else str(default)


def _option(name: str, meta: Setting) -> inspect.Parameter:
    """The ``fabench run`` option of one setting, as a keyword parameter typer reads."""
    flag = option_name(name, meta)
    kind = _cli_type(name, meta)
    decls = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,)
    info = typer.Option(*decls, help=meta.help, show_default=_show_default(name, meta), rich_help_panel=meta.panel)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, info])


def _config_value(name: str, value: Any) -> Any:
    """An option's parsed value as the RunConfig field wants it (None: left out)."""
    if value is None or value == []:
        return None
    option = option_name(name, SETTINGS[name])
    kind = _TYPES[name].split("|")[0].strip()
    values = plain(value)
    if kind == "list[int]":
        return _int_list(values, option)
    if kind == "list[str]":
        return _patterns(values)
    if kind.startswith("dict["):
        return key_values(values, option)
    if kind.startswith("tuple["):
        return tuple(values)
    return values


def build_config(values: dict) -> RunConfig:
    """A RunConfig from CLI values: unset ones keep RunConfig's defaults (the recipe fills the rest)."""
    settings = {name: _config_value(name, value) for name, value in values.items()}
    return RunConfig.from_dict({k: v for k, v in settings.items() if v is not None})


def run_command(force: bool = False, **values: Any) -> None:
    """Train one model with one feedback rule and record the result under results/."""
    from fabench.diagnostics import run_hooks
    from fabench.train import run
    from fabench.train.display import RunDisplay

    config = build_config(values)
    display = RunDisplay(live=config.progress)
    try:
        result = run(config, force=force, on_event=display, hooks=run_hooks(config))
    finally:
        display.close()
    if result.status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


def _run_signature() -> inspect.Signature:
    """One option per RunConfig setting that has one, in help-panel order, then ``--force``."""
    options = [_option(name, meta) for panel in PANELS for name, meta in SETTINGS.items()
               if meta.panel == panel and meta.option is not None]
    force = typer.Option("--force", help="Rerun from scratch even if this run finished or has a checkpoint.",
                         rich_help_panel=PANELS[-1])
    options.append(inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, default=False,
                                     annotation=Annotated[bool, force]))
    return inspect.Signature(options)


run_command.__signature__ = _run_signature()
app.command("run", cls=SingleUseCommand)(run_command)


@app.command("eval", cls=SingleUseCommand)
def eval_command(
    run_dir: Annotated[str, typer.Argument(help="A run folder, results/<task>/<run_id>.")],
    dataset: Annotated[str, typer.Option(help="Dataset name or .npz path (x_test, y_test alone is enough).")],
    data_dir: Annotated[str, typer.Option(help="Folder of downloaded datasets.")] = "data",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Evaluation batch size.", show_default="the run's")] = None,
    plugin: Annotated[list[str] | None, typer.Option("--plugin", help="A .py file or module whose rules to load (repeatable; the run's own plugins load by themselves).")] = None,
) -> None:
    """Report a trained run's top-1/top-5 on another dataset and add it to the run's record."""
    from fabench.rules import load_plugins
    from fabench.train import evaluate_run

    load_plugins(plugin)

    entry = evaluate_run(run_dir, dataset, data_dir=data_dir, device=device, batch_size=batch_size)
    typer.echo(f"{run_dir}: {entry['name']} top1 {entry['top1']:.2f}% top5 {entry['top5']:.2f}% "
               f"loss {entry['loss']:.4f} ({entry['n']} images, checkpoint of epoch {entry['epoch']})")
