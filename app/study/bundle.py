"""A study's served model: a run's checkpoint copied into the model repository under the repository's name for
it, and evaluated there, so that its metrics.json, card.md and figures are its own.

The sha256 of the weights, of the gate's tensors and of a text model's tokenizer cover those files only, so the
copy, renamed in its manifest, stays valid (loading checks it).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.checkpoint.files import read_manifest, write_manifest
from app.checkpoint.manifest import MANIFEST_FILE, WEIGHTS_FILE, Manifest
from app.errors import CheckpointError
from app.study.design import EVALUATION_SEED
from app.study.runs import load_result

# The model repository's name for each recurrent or text study's served model.
BUNDLED_NAMES = {"pm25": "pm25-next-hour", "pbcseq": "pbcseq-death-2y", "rotten-tomatoes": "rotten-tomatoes-sentiment"}


def bundled_name(study: str) -> str:
    return BUNDLED_NAMES.get(study, f"{study}-best")


def copy_checkpoint(source: Path, target: Path) -> Manifest:
    """Copy the checkpoint in ``source`` to ``target`` (replacing a checkpoint there, never another folder),
    renamed after ``target`` and without metrics (an evaluation there writes them)."""
    if target.exists():
        if not (target / MANIFEST_FILE).is_file():
            raise FileExistsError(f"{target} exists and is not a checkpoint folder; not replacing it")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    manifest = read_manifest(source)
    files = [WEIGHTS_FILE, manifest.gate.tensors.file]
    if manifest.text is not None:
        files.append(manifest.text.tokenizer.file)
    for name in files:
        shutil.copy2(source / name, target / name)
    write_manifest(target, manifest.model_copy(update={"name": target.name, "metrics": {}}))
    return manifest


def best_run(folders: Sequence[Path]) -> Path:
    """The finished run with the lowest validation NLL (the rule every study's served model is chosen by)."""
    finished = [(load_result(f), f) for f in folders]
    scored = [(r["training"]["best_val_nll"], f) for r, f in finished if r is not None]
    if not scored:
        raise ValueError("no finished run to bundle")
    return min(scored, key=lambda pair: pair[0])[1]


def already_bundled(source: Path, target: Path) -> Manifest | None:
    """``target``'s manifest when it already serves ``source``'s run (the same weights and gate, by sha256) and
    was evaluated there (its metrics and card written); otherwise None."""
    try:
        bundled, run = read_manifest(target), read_manifest(source)
    except CheckpointError:
        return None
    same = bundled.weights.sha256 == run.weights.sha256 and bundled.gate.tensors.sha256 == run.gate.tensors.sha256
    return bundled if same and bundled.metrics and (target / "card.md").is_file() else None


def bundle_sequence_model(source: Path, target: Path) -> dict[str, Any]:
    """Copy the recurrent or text run in ``source`` to ``target`` and evaluate it there (metrics.json, card.md,
    figures), as ``sbnn evaluate`` does; a ``target`` that already serves that run evaluated is kept as it is,
    so that rewriting a report does not repeat the evaluation (``sbnn evaluate`` redoes it)."""
    from app.checkpoint.io import load_checkpoint
    from app.data.rotten_tomatoes import load_text_dataset
    from app.data.sequence_table import load_sequence_dataset
    from app.evaluate import sequence_evaluate as sequences

    kept = already_bundled(source, target)
    if kept is not None:
        return bundled_entry(source, target, kept)
    manifest = copy_checkpoint(source, target)
    checkpoint = load_checkpoint(target)
    data = (load_text_dataset if manifest.text is not None else load_sequence_dataset)(manifest.data, None)
    scored = sequences.score_sequence_sets(checkpoint, data, None, EVALUATION_SEED)
    result = sequences.evaluate_sequences(checkpoint, data, scored=scored)
    sequences.write_sequence_evaluation(checkpoint, data, result, figures=True, scored=scored)
    return bundled_entry(source, target, manifest)


def bundled_entry(source: Path, target: Path, manifest: Manifest) -> dict[str, Any]:
    """What a report records of a bundled model: where it went, which run it came from, and its size."""
    return {
        "folder": str(target),
        "source": source.name,
        "kind": manifest.kind.value,
        "seed": manifest.training.seed,
        "best_val_nll": manifest.training.best_val_nll,
        "bytes": sum(p.stat().st_size for p in target.iterdir() if p.is_file()),
    }
