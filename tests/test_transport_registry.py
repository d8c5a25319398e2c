"""One transport registry (``settings.TRANSPORTS``): every name in it opens a transport of that name,
and the CLI offers exactly those names."""

from __future__ import annotations

import importlib

import click
import pytest

from pipeline.cli import cli
from pipeline.errors import SettingsError
from pipeline.settings import TRANSPORTS, Settings
from pipeline.transports import open_transport


@pytest.mark.parametrize("name", list(TRANSPORTS))
def test_every_registered_name_is_a_class_of_that_name_that_opens_from_settings(name: str) -> None:
    module, _, class_name = TRANSPORTS[name].partition(":")
    transport_class = getattr(importlib.import_module(module), class_name)

    assert transport_class.name == name
    assert callable(transport_class.from_settings)


def test_opening_by_name_gives_that_transport(settings: Settings) -> None:
    transport = open_transport(settings, "outbox")
    try:
        assert transport.name == "outbox"
    finally:
        transport.close()


def test_an_unregistered_name_is_a_settings_error_naming_the_key(settings: Settings) -> None:
    with pytest.raises(SettingsError, match=r"delivery.transport: unknown transport 'pigeon' \(outbox, smtp"):
        open_transport(settings, "pigeon")


@pytest.mark.parametrize("path", [("send",), ("campaigns", "resume")])
def test_the_cli_offers_exactly_the_registered_transports(path: tuple[str, ...]) -> None:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        with click.Context(command) as ctx:
            sub = command.get_command(ctx, name)
        assert sub is not None
        command = sub
    (option,) = [p for p in command.params if p.name == "transport"]

    assert isinstance(option.type, click.Choice)
    assert list(option.type.choices) == list(TRANSPORTS)
