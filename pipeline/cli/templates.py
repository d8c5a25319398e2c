"""`newsletter templates`: the packaged templates, which the project overrides, and ejecting one."""

from __future__ import annotations

import click

from pipeline.cli.context import CliContext, console, pass_context, shown


@click.group()
def templates() -> None:
    """The packaged templates: see which the project overrides, copy one into it to edit."""


@templates.command("list")
@pass_context
def list_templates(ctx: CliContext) -> None:
    """Every template and where the renderer reads it from: the package, or the project's templates/.

    A file in the project's templates folder overrides the packaged one of the same name, file by
    file; every other template still comes from the package.
    """
    from pipeline.render.overrides import template_files

    folder = ctx.settings.path(ctx.settings.newsletter.templates_dir)
    files = template_files(folder)
    width = max(len(file.name) for file in files)
    for file in files:
        if not file.in_project:
            where = "packaged"
        else:
            where = shown(folder / file.name) + (" (overrides the packaged one)" if file.packaged else "")
        console.print(f"{file.name:<{width}}  {where}", soft_wrap=True, markup=False)


@templates.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Replace the project's own copy with the packaged one.")
@pass_context
def eject(ctx: CliContext, name: str, force: bool) -> None:
    """Copy the packaged template NAME (as `templates list` shows it) into the project's templates/.

    The copy then overrides the packaged one: edit it there. Refuses to overwrite a copy the project
    already has, unless --force.
    """
    from pipeline.render.overrides import eject as eject_template

    folder = ctx.settings.path(ctx.settings.newsletter.templates_dir)
    path = eject_template(name, folder, force=force)
    console.print(
        f"Copied the packaged {name} to {shown(path)}: edit it there; every other template still comes "
        "from the package.",
        soft_wrap=True,
        markup=False,
    )
