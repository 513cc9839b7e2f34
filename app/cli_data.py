"""``sbnn train``'s choice of data: a bundled data set, a flat table, or a long table of sequences."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from app.cli_options import parse_bounds, parse_names, parse_units

if TYPE_CHECKING:
    from app.data.dataset import TabularDataset
    from app.data.sequence import SequenceDataset
    from app.data.text import TextDataset

BUNDLED = ("flchain", "pm25", "pbcseq", "rotten-tomatoes")
SEQUENCE_DATASETS = ("pm25", "pbcseq")
TEXT_DATASETS = ("rotten-tomatoes",)


def is_sequence_data(dataset: str | None, sequence_id: str | None) -> bool:
    """Whether the options name sequences (a bundled sequence set, or a table with --sequence-id)."""
    return dataset in SEQUENCE_DATASETS or sequence_id is not None


def is_text_data(dataset: str | None) -> bool:
    """Whether the options name a text data set (a Transformer over its tokens)."""
    return dataset in TEXT_DATASETS


def load_training_data(
    dataset: str | None,
    csv: Path | None,
    target: str | None,
    features: str | None,
    categorical: str | None,
    drop: str | None,
    ood_csv: Path | None,
    seed: int,
    bounds: str | None = None,
    units: str | None = None,
    task: str | None = None,
    sequence_id: str | None = None,
    time: str | None = None,
    max_length: int | None = None,
) -> TabularDataset | SequenceDataset | TextDataset:
    """The data set the options name; typer.BadParameter for a combination that does not fit."""
    if (dataset is None) == (csv is None):
        raise typer.BadParameter("give exactly one of --dataset NAME or --csv PATH", param_hint="--dataset")
    if (sequence_id is None) != (time is None):
        raise typer.BadParameter("--sequence-id and --time go together (a long table)", param_hint="--sequence-id")
    if dataset is not None:
        table_only = {
            "--bounds": bounds,
            "--units": units,
            "--drop": drop,
            "--task": task,
            "--sequence-id": sequence_id,
        }
        given = [option for option, value in table_only.items() if value is not None]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: for --csv tables (bundled data sets have their own)")
        if max_length is not None and dataset not in TEXT_DATASETS:
            raise typer.BadParameter(
                "--max-length is for --csv sequence tables and text data sets", param_hint="--max-length"
            )
        if dataset == "flchain":
            from app.data.flchain import load_flchain

            return load_flchain(seed)
        if dataset in TEXT_DATASETS:
            from app.data.rotten_tomatoes import load_rotten_tomatoes

            return load_rotten_tomatoes(seed)
        if dataset in SEQUENCE_DATASETS:
            from app.data.sequence_table import load_bundled_sequences

            return load_bundled_sequences(dataset, seed)
        raise typer.BadParameter(
            f"unknown data set {dataset!r}; available: {', '.join(BUNDLED)}", param_hint="--dataset"
        )
    if target is None:
        raise typer.BadParameter("--csv needs --target", param_hint="--target")
    if sequence_id is not None and time is not None:
        from app.data.sequence_table import load_sequence_table

        return load_sequence_table(
            csv,
            target,
            sequence_id,
            time,
            features=parse_names(features),
            categorical=parse_names(categorical),
            task=task,
            max_length=max_length,
            ood_path=ood_csv,
            seed=seed,
            plausible=parse_bounds(bounds),
            units=parse_units(units),
            drop=parse_names(drop),
        )
    if max_length is not None:
        raise typer.BadParameter("--max-length is for sequence tables (with --sequence-id)", param_hint="--max-length")
    from app.data.tabular import load_table

    return load_table(
        csv,
        target,
        parse_names(features),
        parse_names(categorical),
        ood_csv,
        seed=seed,
        plausible=parse_bounds(bounds),
        units=parse_units(units),
        drop=parse_names(drop),
        task=task,
    )
