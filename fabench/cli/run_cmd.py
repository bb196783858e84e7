"""``fabench run`` (one training run) and ``fabench eval`` (a trained run on another dataset).

Every ``run`` option sets the RunConfig field of the same name; an option left out keeps
RunConfig's default. The optimizer, learning rate, momentum, weight decay and forward init left
out are filled by the run's recipe (``fabench.train.recipes``: per architecture and rule family,
then per optimizer), which the run prints in its header and records in its manifest.

Exit codes: 0 for a finished (or already finished) or diverged run (divergence is a result),
2 for bad input (one line on stderr, nothing written), 130 for a run stopped by Ctrl-C after
saving a checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

from typing import Annotated

import typer

from fabench.cli import app
from fabench.cli.single_use import SingleUseCommand
from fabench.errors import FabenchError
from fabench.train.config import RunConfig

EXIT_INTERRUPTED = 130
#: Options of ``fabench run`` that steer the command, not the run (every other one is a RunConfig field).
COMMAND_ONLY = ("force", "no_progress")


def _default(name: str) -> str:
    return str(getattr(RunConfig, name))


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FabenchError(f"{option} takes comma-separated integers, e.g. 30,60; got '{text}'") from None


def _key_values(items: list[str] | None, option: str) -> dict | None:
    """``["hidden=1000", "activation=sigmoid"]`` -> ``{"hidden": 1000, "activation": "sigmoid"}``."""
    if not items:
        return None
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise FabenchError(f"{option} takes KEY=VALUE, e.g. {option} hidden=1000; got '{item}'")
        value: object = text.strip()
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def _patterns(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def build_config(values: dict) -> RunConfig:
    """A RunConfig from CLI values: unset ones keep RunConfig's defaults (the recipe fills the rest)."""
    return RunConfig.from_dict({k: v for k, v in values.items() if v is not None})


@app.command("run", cls=SingleUseCommand)
def run_command(
    ctx: typer.Context,
    rule: Annotated[str | None, typer.Option(help="Feedback rule, e.g. bp, fa, fa-usf-sn+const.", show_default=_default("rule"))] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture (fabench ls archs).", show_default=_default("arch"))] = None,
    arch_option: Annotated[list[str] | None, typer.Option(help="An option of the architecture as KEY=VALUE, e.g. hidden=1000 or activation=sigmoid (repeatable).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name or .npz path (fabench ls datasets).", show_default=_default("dataset"))] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of init, feedback and data order.", show_default=_default("seed"))] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.", show_default=_default("epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.", show_default=_default("batch_size"))] = None,
    recipe: Annotated[str | None, typer.Option(help="Recipe filling unset optimizer/lr/init: auto (by arch and rule family), none, or a recipe name.", show_default=_default("recipe"))] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, adam or adamw.", show_default="the recipe's, else adam")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.", show_default="the recipe's, else sgd 0.05, adam/adamw 1e-3")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum.", show_default="0.9")] = None,
    nesterov: Annotated[bool | None, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (SGD).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay of conv/linear weights.", show_default="the recipe's, else sgd 5e-4, adam 0, adamw 1e-2")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Clip the gradients' global L2 norm to this.", show_default="no clipping")] = None,
    weight_init: Annotated[str | None, typer.Option(help="Forward-weight init of covered layers: default (the arch's), xavier-uniform, xavier-normal, kaiming-normal, kaiming-uniform.", show_default="the recipe's, else default")] = None,
    weight_init_scale: Annotated[float | None, typer.Option(help="Multiply every covered forward weight by this after init.", show_default="the recipe's, else 1")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing of the training loss.", show_default=_default("label_smoothing"))] = None,
    schedule: Annotated[str | None, typer.Option(help="none, step, multistep or cosine (per step).", show_default=_default("schedule"))] = None,
    milestones: Annotated[str | None, typer.Option(help="Epochs where multistep multiplies the rate by gamma, e.g. 30,60.")] = None,
    gamma: Annotated[float | None, typer.Option(help="Decay factor of step/multistep.", show_default=_default("gamma"))] = None,
    step_size: Annotated[int | None, typer.Option(help="Epochs between decays of the step schedule.", show_default=_default("step_size"))] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="Linear warmup length in epochs (may be fractional).", show_default=_default("warmup_epochs"))] = None,
    subset: Annotated[int | None, typer.Option(help="Train on a class-balanced subset of this many images.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input side in pixels.", show_default="the architecture's, else the dataset's")] = None,
    val_split: Annotated[int | None, typer.Option(help="Hold out this many training images (class-balanced) as a validation split.", show_default=_default("val_split"))] = None,
    feedback_scale: Annotated[float | None, typer.Option(help="Scale of random/sign feedback.", show_default="from --feedback-init")] = None,
    feedback_init: Annotated[str | None, typer.Option(help="auto, kaiming, xiao, xavier or weight.", show_default=_default("feedback_init"))] = None,
    sn_norm: Annotated[str | None, typer.Option(help="Norm of fa-usf-sn: fro (flattened L2) or spectral.", show_default=_default("sn_norm"))] = None,
    ei_mode: Annotated[str | None, typer.Option(help="+ei: a weight whose update would flip sign is set to zero or keep-sign (1e-8).", show_default=_default("ei_mode"))] = None,
    mirror_lr: Annotated[float | None, typer.Option(help="wm: mirror learning rate (B moves by lr·(estimate − decay·B)).", show_default=_default("mirror_lr"))] = None,
    mirror_decay: Annotated[float | None, typer.Option(help="wm: decay of B in the mirror (1: B tracks W; less: W / decay).", show_default=_default("mirror_decay"))] = None,
    mirror_steps: Annotated[int | None, typer.Option(help="wm: mirror steps each time the mirror runs.", show_default=_default("mirror_steps"))] = None,
    mirror_every: Annotated[str | None, typer.Option(help="wm: run the mirror after every training step or every epoch.", show_default=_default("mirror_every"))] = None,
    mirror_warmup: Annotated[int | None, typer.Option(help="wm: mirror steps before the first training step.", show_default="one epoch's worth")] = None,
    feedback_memory: Annotated[str | None, typer.Option(help="dfa/dense-fa matrices: auto, materialised, tiled or a budget like 512MB.", show_default=_default("feedback_memory"))] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Module-name patterns kept on exact backprop (repeat or comma-separate).")] = None,
    amp: Annotated[str | None, typer.Option(help="Mixed precision: bf16, fp16 (CUDA, with GradScaler) or off.", show_default=_default("amp"))] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last", help="NHWC memory layout.")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    deterministic: Annotated[bool | None, typer.Option("--deterministic/--no-deterministic", help="Deterministic kernels (bitwise resumable on CPU).")] = None,
    diagnostics: Annotated[str | None, typer.Option(help="Per-layer alignment probe: off, epoch, or every N steps (and each epoch).", show_default=_default("diagnostics"))] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.", show_default=_default("device"))] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers (folder datasets such as imagenet).", show_default=_default("workers"))] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder of downloaded datasets.", show_default=_default("data_dir"))] = None,
    results_dir: Annotated[str | None, typer.Option(help="Folder of results.", show_default=_default("results_dir"))] = None,
    task: Annotated[str | None, typer.Option(help="Task the run is filed under.", show_default=_default("task"))] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun from scratch even if this run finished or has a checkpoint.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain per-epoch lines instead of a progress bar.")] = False,
) -> None:
    """Train one model with one feedback rule and record the result under results/."""
    from fabench.diagnostics import run_hooks
    from fabench.train import run
    from fabench.train.display import RunDisplay

    values = {name: value for name, value in ctx.params.items() if name not in COMMAND_ONLY}
    values.pop("arch_option", None)
    values.update(milestones=_int_list(milestones, "--milestones"), exclude=_patterns(exclude),
                  progress=False if no_progress else None, arch_options=_key_values(arch_option, "--arch-option"))
    config = build_config(values)
    display = RunDisplay(live=config.progress)
    try:
        result = run(config, force=force, on_event=display, hooks=run_hooks(config))
    finally:
        display.close()
    if result.status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command("eval", cls=SingleUseCommand)
def eval_command(
    run_dir: Annotated[str, typer.Argument(help="A run folder, results/<task>/<run_id>.")],
    dataset: Annotated[str, typer.Option(help="Dataset name or .npz path (x_test, y_test alone is enough).")],
    data_dir: Annotated[str, typer.Option(help="Folder of downloaded datasets.")] = "data",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Evaluation batch size.", show_default="the run's")] = None,
) -> None:
    """Report a trained run's top-1/top-5 on another dataset and add it to the run's record."""
    from fabench.train import evaluate_run

    entry = evaluate_run(run_dir, dataset, data_dir=data_dir, device=device, batch_size=batch_size)
    typer.echo(f"{run_dir}: {entry['name']} top1 {entry['top1']:.2f}% top5 {entry['top5']:.2f}% "
               f"loss {entry['loss']:.4f} ({entry['n']} images, checkpoint of epoch {entry['epoch']})")
