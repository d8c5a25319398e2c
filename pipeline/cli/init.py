"""`newsletter init`: a newsletter project from nothing, so a new user needs no clone of this repository."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli.context import console, console_err, shown

OPTIONS = {
    "name": "--name",
    "from_name": "--name",
    "base_url": "--base-url",
    "from_email": "--from-email",
    "postal_address": "--postal-address",
    "timezone": "--timezone",
    "description": "--description",
}
"""The option that gives each value of the new settings (the From name is the newsletter's name)."""
QUESTIONS = {
    "name": "The newsletter's name",
    "base_url": "Its public web address, where `newsletter serve` will run (e.g. https://news.example.org)",
    "from_email": "The address it is sent from",
    "postal_address": "The sender's postal address (the law wants it in every footer)",
    "timezone": "The time zone of issue dates and send times (an IANA name such as Europe/London)",
}


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="The newsletter's name: the masthead and the From name.")
@click.option("--base-url", help="Public https:// address of `newsletter serve`: every email links there.")
@click.option("--from-email", help="Address the newsletter is sent from.")
@click.option("--postal-address", help="The sender's postal address, in every footer (required by law).")
@click.option(
    "--timezone", default="UTC", show_default=True, help="IANA time zone of issue dates and send times."
)
@click.option(
    "--description",
    default="a weekly newsletter",
    show_default=True,
    help='What it is, after its name: the footer says "subscribed to NAME, DESCRIPTION".',
)
@click.option("--force", is_flag=True, help="Write into a folder that is not empty; files there are kept.")
def init(
    directory: Path,
    name: str | None,
    base_url: str | None,
    from_email: str | None,
    postal_address: str | None,
    timezone: str,
    description: str,
    force: bool,
) -> None:
    """Start a newsletter in DIR: settings, a sample issue, segments, and checks for git and CI.

    Writes settings.toml (every setting with a comment), issues/ with a sample issue that passes
    `newsletter check --strict`, subscribers/segments.toml, templates/ for your own versions of the
    packaged templates, .gitignore, a pre-commit hook and a GitHub workflow that run the check, and a
    README for the editors. In a terminal, it asks for the values not given as options.
    """
    from pipeline.content.newproject import (
        REQUIRED,
        NewProject,
        check_folder,
        create_project,
        problems,
    )

    check_folder(directory, force=force)  # before asking anything
    values = {"name": name, "base_url": base_url, "from_email": from_email, "postal_address": postal_address}
    terminal = sys.stdin.isatty()
    ask = [key for key in REQUIRED if not (values[key] or "").strip()]
    if ask and not terminal:
        raise click.UsageError(
            f"missing {', '.join(OPTIONS[key] for key in ask)}: give them as options, "
            "or run `newsletter init` in a terminal to be asked"
        )
    while True:
        for key in ask:
            if key == "timezone":
                timezone = click.prompt(QUESTIONS[key], default=timezone)
            else:
                values[key] = click.prompt(QUESTIONS[key], default=values[key] or None)
        given = {key: value or "" for key, value in values.items()}
        project = NewProject(
            given["name"],
            given["base_url"],
            given["from_email"],
            given["postal_address"],
            timezone,
            description,
        )
        wrong = problems(project)
        if not wrong:
            break
        said = "\n".join(f"{OPTIONS[p.field]}: {p.message}" for p in wrong)
        if not terminal:
            raise click.UsageError(said)
        console_err.print(said, style="yellow", soft_wrap=True, markup=False)
        ask = list(dict.fromkeys("name" if p.field == "from_name" else p.field for p in wrong))
    created = create_project(directory, project, force=force)
    console.print(f"Started {project.name} in {shown(directory)}:", soft_wrap=True, markup=False)
    for path in created.written:
        console.print(f"  {shown(path)}", soft_wrap=True, markup=False)
    for path in created.kept:
        console.print(f"  {shown(path)}  (already there: kept)", soft_wrap=True, markup=False)
    console.print(
        f"Next: cd {shown(directory)} && newsletter check && newsletter preview", soft_wrap=True, markup=False
    )
