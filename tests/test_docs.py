"""Every ```python block of README.md and docs/*.md runs as written.

A file's blocks run in order in one namespace (a later block may use an earlier one's names), in a temporary
working directory holding a copy of models/, so `models/flchain-mortality` resolves and nothing a block writes
lands in the repository. A block that is not meant to run is fenced as another language (```text, ```bash).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[ \t]*(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PYTHON = {"python", "py", "python3"}


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, source) of each Python block, in order."""
    text = path.read_text()
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1).lower() in PYTHON
    ]


WITH_CODE = [path for path in DOCUMENTS if python_blocks(path)]


def test_the_docs_have_python_blocks_to_run() -> None:
    assert WITH_CODE, "no ```python block found: the test below would check nothing"
    assert ROOT / "docs" / "library.md" in WITH_CODE


@pytest.mark.parametrize("path", WITH_CODE, ids=[str(p.relative_to(ROOT)) for p in WITH_CODE])
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "models", tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, source in python_blocks(path):
        # Line numbers in a traceback are the document's own.
        code = compile("\n" * line + source, f"{path.relative_to(ROOT)}", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples
