"""``newsletter preview``: the editor's live preview in the browser (the app is ``pipeline.preview``)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import click

from pipeline.cli.context import CliContext, console, console_err, pass_context
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import uvicorn

LOOPBACK = "127.0.0.1"
START_SECONDS = 30.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@click.command()
@click.option(
    "--host",
    default=LOOPBACK,
    show_default=True,
    help="Address to listen on. Another than this machine's own shows your drafts to the network.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8001, show_default=True, help="Port.")
@click.option("--open", "open_browser", is_flag=True, help="Open the preview in the web browser.")
@pass_context
def preview(ctx: CliContext, host: str, port: int, open_browser: bool) -> None:
    """Preview issues live in the browser: desktop, phone, dark mode, text part and check's problems.

    Lists every issue with its check status; an issue's page shows it as an inbox line (sender,
    subject, preheader, date), at 800 px, at 375 px, at 375 px in dark mode, and as its text part,
    with every problem `newsletter check` finds. Saving an issue, a template, settings.toml or the
    segments file updates the open pages by themselves. Copies are personalised for a made-up
    reader, with preview links that change nothing for anybody. Stop it with Ctrl-C.
    """
    # Starlette, uvicorn and the renderer load only for this command.
    from pipeline.preview import Workspace, allowed_hosts, create_app, server
    from pipeline.settings import find_settings_file

    workspace = Workspace(find_settings_file(ctx.settings_path))
    if not is_loopback(host):
        console_err.print(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach it can read your drafts",
            soft_wrap=True,
        )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # uvicorn's start and stop lines: -vv
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    listening = _listen(host, port)
    uvicorn_server = server(create_app(workspace, hosts=allowed_hosts(host)), host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    console.print(
        f"Previewing {workspace.settings.newsletter.name} on {url} (Ctrl-C to stop)", soft_wrap=True
    )
    if open_browser:
        threading.Thread(target=_open_when_started, args=(uvicorn_server, url), daemon=True).start()
    # uvicorn shuts down gracefully on Ctrl-C, then passes it on: for `preview` that is a normal stop.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn_server.run(sockets=[listening])
    console.print("Stopped.")


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything starts: a port in use is one clear line."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise PipelineError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (is a preview running already? try --port)"
        ) from None
    return listening


def _open_when_started(uvicorn_server: uvicorn.Server, url: str) -> None:
    """The browser, once the server answers (it may be told to start before the socket listens)."""
    import webbrowser

    deadline = time.monotonic() + START_SECONDS
    while not uvicorn_server.started:
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    webbrowser.open(url)
