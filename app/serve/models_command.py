"""``sbnn models list|load|unload``: the repository API (``/v2/repository``) of a running server, from a shell.

Plain HTTP with the standard library: the command needs nothing the server's install does not have. A key
with the ``admin`` scope goes in ``--token`` or ``SBNN_TOKEN`` once the server has API keys.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer
from rich.table import Table

from app.cli_options import CommandGroup, console, errors

models_app = typer.Typer(
    cls=CommandGroup,
    help="Models of a running server: list them, load (or reload) one from disk, unload one.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
TIMEOUT_S = 600.0  # a load verifies and warms a checkpoint before it answers
UrlOption = Annotated[str, typer.Option(help="The server's base URL.", envvar="SBNN_URL")]
TokenOption = Annotated[
    str | None, typer.Option(help="An API key with the admin scope (env SBNN_TOKEN).", envvar="SBNN_TOKEN")
]


def _call(url: str, path: str, token: str | None, body: dict[str, Any] | None = None) -> Any:
    """GET (no body) or POST ``path``; the decoded JSON answer. A refusal prints the server's reason, exit 1;
    no server to reach, exit 2."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (the URL is the user's)
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
            reason = answer.get("error") or answer.get("detail") or answer
        except ValueError:
            reason = exc.reason
        errors.print(f"error: {exc.code} {reason}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    except (urllib.error.URLError, OSError) as exc:
        errors.print(f"error: cannot reach {url}: {exc}", markup=False, highlight=False)
        raise typer.Exit(code=2) from None


@models_app.command("list")
def list_models(
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
    ready: Annotated[bool, typer.Option(help="Only the models ready for inference.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The index as the server answers it (JSON).")] = False,
) -> None:
    """Every model and version in the server's repository, with its state and why it is not ready."""
    entries = _call(url, "/v2/repository/index", token, {"ready": ready})
    if as_json:
        console.print_json(data=entries)
        return
    table = Table("model", "version", "state", "reason", box=None)
    for entry in entries:
        table.add_row(entry["name"], entry["version"] or "-", entry["state"], entry["reason"])
    console.print(table)


@models_app.command("load")
def load_model(
    name: Annotated[str, typer.Argument(help="The model's folder name.")],
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Load or reload a model from disk; the version serving now keeps serving if the new one fails."""
    answer = _call(url, f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/load", token, {})
    console.print(f"{answer['name']}: serving version(s) {', '.join(answer['versions']) or '-'}", markup=False)


@models_app.command("unload")
def unload_model(
    name: Annotated[str, typer.Argument(help="The model's folder name.")],
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Take a model out of service (requests in flight finish); `sbnn models load` brings it back."""
    _call(url, f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/unload", token, {})
    console.print(f"{name}: unloaded", markup=False)
