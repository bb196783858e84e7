"""``fabench ls archs [PATTERN]`` and ``fabench ls datasets``: architectures and datasets by name."""

from __future__ import annotations

import typer

from fabench.cli.ls import _print_listing, ls_app


@ls_app.command("archs")
def ls_archs(
    pattern: str = typer.Argument(
        "*", help="fnmatch pattern, e.g. 'resnet*', 'tv:*', 'timm:vit_*'."
    ),
) -> None:
    """List architectures: fabench's own and timm's by plain name, torchvision's as tv:NAME."""
    from fabench.archs import list_archs

    rows = list(list_archs(pattern).items())
    if not rows:
        typer.echo(f"no architecture matches '{pattern}'", err=True)
        return
    _print_listing("architectures (prefix fabench:, timm: or tv: to force a source)", rows)


@ls_app.command("datasets")
def ls_datasets() -> None:
    """List datasets; a path to a .npz file works as a dataset too."""
    from fabench.data import list_datasets

    rows = list(list_datasets().items())
    rows.append(
        (
            "PATH.npz",
            "any .npz with uint8 x_train, x_test (NHWC or NHW) and int y_train, y_test; "
            "x_test, y_test alone = evaluation only",
        )
    )
    _print_listing("datasets (--data-dir holds the torchvision and imagenet files)", rows)
