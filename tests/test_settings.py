"""settings.toml: loading, errors that name file and key, file selection, secrets, and documentation."""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline.content.newproject import NewProject, settings_text
from pipeline.errors import SettingsError
from pipeline.settings import (
    SECRET_ENV_NAMES,
    SETTINGS_ENV,
    Settings,
    find_settings_file,
    load_settings,
    secret,
)
from tests.paths import REPO

REPO_SETTINGS = REPO / "settings.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    for name in SECRET_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def edited(project: Path, old: str, new: str, name: str = "settings.toml") -> Path:
    """The project's settings file with one edit, written as ``name``."""
    text = (project / "settings.toml").read_text(encoding="utf-8")
    assert old in text, f"settings.toml no longer contains {old!r}"
    path = project / name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of ``path`` that starts (after indentation) with ``needle``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.lstrip().startswith(needle))


def settings_error(path: Path) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    return str(caught.value)


# Loading


def test_repository_settings_file_loads() -> None:
    settings = load_settings(REPO_SETTINGS)

    assert settings.root == REPO
    assert settings.newsletter.name
    assert settings.newsletter.base_url.startswith("https://")
    assert settings.newsletter.postal_address
    assert "@" in settings.sender.from_email
    assert settings.delivery.transport == "outbox"


def test_only_the_required_keys_are_needed(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        "[newsletter]\n"
        'name = "Weekly"\n'
        'base_url = "https://news.example.org/"\n'
        'postal_address = "1 Main St, Springfield"\n'
        "[sender]\n"
        'from_email = "hello@example.org"\n'
        'from_name = "Weekly"\n',
        encoding="utf-8",
    )

    settings = load_settings(path)

    assert settings.newsletter.base_url == "https://news.example.org", "trailing slash is dropped"
    assert settings.newsletter.timezone == "UTC"
    assert settings.sender.reply_to is None
    assert settings.delivery.batch_size == 500
    assert settings.store.url == "sqlite:///var/newsletter.db"


# Errors name the file and the key


def test_unknown_key_is_an_error_with_did_you_mean(project: Path) -> None:
    path = edited(project, "from_email =", "from_emial =")

    message = settings_error(path)

    line = line_of(path, "from_emial =")
    assert (
        f"{path}:{line}:1: error: sender.from_emial: unknown key 'from_emial' (did you mean 'from_email'?)"
        in (message.splitlines())
    )


def test_unknown_section_is_an_error_with_did_you_mean(project: Path) -> None:
    path = edited(project, "[delivery]", "[delivry]")

    assert "delivry: unknown key 'delivry' (did you mean 'delivery'?)" in settings_error(path)


def test_wrong_type_is_an_error_naming_the_key(project: Path) -> None:
    path = edited(project, "rate_per_second = 50.0", 'rate_per_second = "fast"')

    message = settings_error(path)

    assert message.startswith(
        f"{path}:{line_of(path, 'rate_per_second =')}:1: error: delivery.rate_per_second: "
    )
    assert "number" in message


def test_text_given_as_number_asks_for_quotes(project: Path) -> None:
    path = edited(project, 'host = "localhost"', "host = 42")

    assert "smtp.host: expected text, got 42: put the value in quotes" in settings_error(path)


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ("rate_per_second = 50.0", "rate_per_second = 0", "delivery.rate_per_second", "greater than 0"),
        ("batch_size = 500", "batch_size = 5000", "delivery.batch_size", "1000"),
        ('transport = "outbox"', 'transport = "carrier-pigeon"', "delivery.transport", "'smtp'"),
        ('timezone = "America/New_York"', 'timezone = "Mars/Olympus"', "newsletter.timezone", "IANA"),
        (
            'base_url = "https://news.example.org"',
            'base_url = "news.example.org"',
            "newsletter.base_url",
            "absolute http(s) URL",
        ),
        ('from_email = "hello@news.example.org"', 'from_email = "hello"', "sender.from_email", "valid email"),
        ('name = "The Juggle"', 'name = "  "', "newsletter.name", "must not be empty"),
    ],
)
def test_invalid_value_is_an_error_naming_the_key(
    project: Path, old: str, new: str, key: str, fragment: str
) -> None:
    message = settings_error(edited(project, old, new))

    [line] = [line for line in message.splitlines() if f": {key}: " in line]
    assert fragment in line


def test_every_problem_is_reported_at_once(project: Path) -> None:
    edited(project, "from_email =", "from_emial =")
    path = edited(project, "batch_size = 500", "batch_size = 0")

    message = settings_error(path)

    assert f"{path}:{line_of(path, 'from_emial =')}:1: error: sender.from_emial: unknown key" in message
    assert (
        f"{path}:{line_of(path, '[sender]')}:1: error: sender.from_email: is required but missing" in message
    )
    assert f"{path}:{line_of(path, 'batch_size =')}:1: error: delivery.batch_size:" in message
    assert len(message.splitlines()) == 3


def test_toml_syntax_error_names_the_file_and_line(project: Path) -> None:
    path = edited(project, 'name = "The Juggle"', 'name = "The Juggle')

    message = settings_error(path)

    line = line_of(path, 'name = "The Juggle')
    assert message == f"{path}:{line}:8: error: TOML syntax: this quoted value is not closed on its line"


def test_missing_required_section_names_it(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[newsletter]\nname = "x"\n', encoding="utf-8")

    message = settings_error(path)

    assert f"{path}: error: sender: is required but missing" in message.splitlines()
    assert "newsletter.base_url: is required but missing" in message


def test_root_is_not_a_settable_key(project: Path) -> None:
    path = project / "settings.toml"
    path.write_text('root = "/etc"\n' + path.read_text(encoding="utf-8"), encoding="utf-8")

    assert "root: unknown key 'root'" in settings_error(path)


def test_missing_file_is_a_settings_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    message = settings_error(path)

    assert message.startswith(str(path))
    assert "not found" in message


# Which file is used


def test_explicit_path_wins_over_environment_and_working_directory(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.setenv(SETTINGS_ENV, str(other / "missing.toml"))
    monkeypatch.chdir(other)

    assert find_settings_file(project / "settings.toml") == project / "settings.toml"
    assert load_settings(project / "settings.toml").root == project


def test_environment_variable_wins_over_working_directory(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "settings.toml").write_text("this is not toml", encoding="utf-8")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(SETTINGS_ENV, str(project / "settings.toml"))

    assert load_settings().root == project


def test_working_directory_settings_toml_is_the_default(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)

    assert find_settings_file() == Path("settings.toml")
    assert load_settings().root == project


def test_no_settings_anywhere_explains_how_to_choose_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert "--settings" in str(caught.value)
    assert SETTINGS_ENV in str(caught.value)


def test_cli_uses_settings_option_and_environment(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # imported here: the rest of this file does not depend on the CLI's wiring
    from tests.fixtures.project import cli_invoker

    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    with_option, without = cli_invoker(project / "settings.toml"), cli_invoker()
    broken = edited(project, "[delivery]", "[delivry]", name="broken.toml")

    by_option = with_option("check", expect=None)
    by_env = without("check", env={SETTINGS_ENV: str(project / "settings.toml")}, expect=None)
    option_over_env = with_option("check", env={SETTINGS_ENV: str(broken)}, expect=None)
    env_broken = without("check", env={SETTINGS_ENV: str(broken)}, expect=None)

    for result in (by_option, by_env, option_over_env):
        assert result.exit_code == 0, result.output
        assert " files checked: 0 error(s)" in result.output
    assert env_broken.exit_code == 1
    assert "delivry" in env_broken.output


# Secrets


@pytest.mark.parametrize(
    ("section", "key"),
    [("sendgrid", "api_key"), ("smtp", "password"), ("newsletter", "secret_key")],
)
def test_secrets_are_not_accepted_from_the_file(project: Path, section: str, key: str) -> None:
    path = edited(project, f"[{section}]\n", f'[{section}]\n{key} = "s3cret-value"\n')

    message = settings_error(path)

    assert f"{section}.{key}: unknown key '{key}'" in message


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test-key")
    monkeypatch.setenv("SMTP_PASSWORD", "")

    assert secret("SENDGRID_API_KEY") == "SG.test-key"
    assert secret("SMTP_PASSWORD") is None, "empty counts as unset"
    assert secret("NEWSLETTER_SECRET_KEY") is None


def test_only_known_secrets_can_be_read() -> None:
    with pytest.raises(KeyError):
        secret("HOME")


# Paths


def test_relative_paths_resolve_against_the_settings_folder(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("somewhere-else"))

    settings = load_settings(project / "settings.toml")

    assert settings.path(settings.newsletter.issues_dir) == project / "issues"
    assert settings.path(settings.newsletter.templates_dir) == project / "templates"
    assert settings.path(settings.delivery.outbox_dir) == project / "outbox"
    assert settings.store_url == f"sqlite:///{(project / 'var' / 'newsletter.db').resolve()}"


def test_absolute_paths_and_urls_are_kept(project: Path) -> None:
    edited(project, 'issues_dir = "issues"', 'issues_dir = "/srv/issues"')
    path = edited(project, 'url = "sqlite:///var/newsletter.db"', 'url = "postgresql+psycopg://u@db/news"')

    settings = load_settings(path)

    assert settings.path(settings.newsletter.issues_dir) == Path("/srv/issues")
    assert settings.store_url == "postgresql+psycopg://u@db/news"


def test_settings_file_in_a_relative_folder_gives_an_absolute_root(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project.parent)

    settings = load_settings(Path(project.name) / "settings.toml")

    assert settings.root.is_absolute()
    assert settings.path(Path("issues")) == project / "issues"


# Documentation: every option documented in the model and in settings.toml


def _nested_model(annotation: object) -> type[BaseModel] | None:
    """The settings model inside ``annotation`` (also through Optional and friends), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_nested_model, typing.get_args(annotation))), None)


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str | None]]:
    """(section, key, description) for every option, walking into nested setting models."""
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        nested = _nested_model(info.annotation)
        if nested is not None:
            yield from _leaf_fields(nested, f"{prefix}{name}.")
        else:
            yield prefix.rstrip("."), name, info.description


def _documented_keys(text: str) -> dict[tuple[str, str], bool]:
    """(section, key) → whether the line before it is a comment; ``# key = …`` examples count."""
    found: dict[tuple[str, str], bool] = {}
    section = ""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if header := re.match(r"^\[([\w.]+)\]\s*$", line):
            section = header[1]
        elif key := re.match(r"^#?\s*(\w+)\s*=", line):
            found.setdefault((section, key[1]), index > 0 and lines[index - 1].lstrip().startswith("#"))
    return found


FIELDS = list(_leaf_fields(Settings))


def test_model_walk_finds_every_section() -> None:
    sections = {section for section, _, _ in FIELDS}
    assert sections >= {"newsletter", "sender", "store", "delivery", "smtp", "sendgrid"}
    assert len(FIELDS) >= 30
    assert [name for name, info in Settings.model_fields.items() if info.exclude] == ["root"]


@pytest.mark.parametrize(("section", "key", "description"), FIELDS, ids=[f"{s}.{k}" for s, k, _ in FIELDS])
def test_every_setting_has_a_description_and_a_commented_line_in_settings_toml(
    section: str, key: str, description: str | None
) -> None:
    assert description and description.strip(), f"{section}.{key} has no description in pipeline/settings.py"
    documented = _documented_keys(REPO_SETTINGS.read_text(encoding="utf-8"))
    assert (section, key) in documented, f"{section}.{key} is missing from settings.toml"
    assert documented[(section, key)], f"{section}.{key} in settings.toml has no comment line above it"


def test_settings_toml_has_no_key_the_model_does_not_know() -> None:
    known = {(section, key) for section, key, _ in FIELDS}
    documented = _documented_keys(REPO_SETTINGS.read_text(encoding="utf-8"))
    assert set(documented) - known == set()


THE_JUGGLE = NewProject(
    name="The Juggle",
    base_url="https://news.example.org",
    from_email="hello@news.example.org",
    postal_address="The Juggle, 100 Example Street, Suite 4, Portland, OR 97201, USA",
    timezone="America/New_York",
    description="a weekly letter for working parents",
    reply_to="editors@news.example.org",
    unsubscribe_mailto="unsubscribe@news.example.org",
)
"""The sample newsletter's values: its settings.toml is the starter's settings template filled with them."""


def test_settings_toml_is_the_starter_template_filled_with_the_juggles_values() -> None:
    """One documented settings file: what `newsletter init` writes and the sample's own are one template,
    so a comment is written once (in pipeline/content/starter/settings.toml.in)."""
    assert REPO_SETTINGS.read_text(encoding="utf-8") == settings_text(THE_JUGGLE), (
        "edit pipeline/content/starter/settings.toml.in, then run `python -m tests.test_settings`"
    )


def test_environment_is_left_untouched_by_loading(project: Path) -> None:
    before = dict(os.environ)
    load_settings(project / "settings.toml")
    assert dict(os.environ) == before


if __name__ == "__main__":  # the sample's settings.toml after an edit of the starter's template
    REPO_SETTINGS.write_text(settings_text(THE_JUGGLE), encoding="utf-8")
