"""``sbnn keys``: make an API key. The token is printed once; only its SHA-256 is stored (app.serve.auth)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from app.cli_options import CommandGroup, fail
from app.serve.auth import KeyEntry, KeyScope, KeysFile, keys_json, new_key

keys_app = typer.Typer(
    cls=CommandGroup,
    help="API keys: make one (the token is shown once; the keys file stores its hash).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _write(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the file at once (a server re-reading it never sees half a file), readable by its owner only."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(keys_json(entries) + "\n")
    os.chmod(name, 0o600)
    os.replace(name, path)


@keys_app.command("new")
def new(
    key_id: Annotated[str, typer.Option("--id", help="The key's name in logs and the audit trail.")],
    scope: Annotated[list[KeyScope], typer.Option(help="A scope the key grants (repeat for more).")] = [  # noqa: B006
        KeyScope.INFER
    ],
    file: Annotated[
        Path | None, typer.Option(help="Keys file to add the key to (created if absent); else the entry is printed.")
    ] = None,
) -> None:
    """Make a key: print its token (give it to the client; it is not stored) and store or print its entry."""
    try:
        token, entry = new_key(key_id, scope)
        entries = []
        if file is not None and file.exists():
            entries = KeysFile.model_validate_json(file.read_text(encoding="utf-8")).keys
            if any(e.id == key_id for e in entries):
                raise ValueError(f"{file} already has a key '{key_id}': choose another id, or remove that one first")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        fail(exc)
    if file is None:
        typer.echo(keys_json([entry]), err=True)
    else:
        _write(file, [*entries, entry])
        typer.echo(f"added key '{key_id}' ({', '.join(s.value for s in entry.scopes)}) to {file}", err=True)
    typer.echo(token)
