"""app.evaluate.plots: PNG files are written and valid; missing matplotlib is explained."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from app.evaluate.plots import write_reliability_diagram, write_score_histogram  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _binary_case(n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    p1 = rng.random(n)
    y = (rng.random(n) < p1).astype(np.int64)
    return y, np.column_stack([1 - p1, p1])


@pytest.mark.parametrize("title", ["", "validation split"])
def test_reliability_diagram_binary(tmp_path: Path, title: str) -> None:
    y, probs = _binary_case()
    out = tmp_path / "reliability.png"
    write_reliability_diagram(out, y, probs, n_bins=10, title=title)
    assert out.stat().st_size > 5_000
    assert _png_size(out) == (600, 600)  # 5 x 5 in at 120 dpi


def test_reliability_diagram_multiclass_creates_parent_dirs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=300)
    y = rng.integers(0, 3, 300)
    out = tmp_path / "nested" / "dir" / "rel.png"
    write_reliability_diagram(str(out), y, probs, n_bins=8)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 5_000


def test_reliability_diagram_with_empty_bins(tmp_path: Path) -> None:
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.1, 0.9]])
    out = tmp_path / "sparse.png"
    write_reliability_diagram(out, [0, 1, 1], probs, n_bins=20)
    assert _png_size(out) == (600, 600)


def test_reliability_diagram_validates_before_plotting(tmp_path: Path) -> None:
    out = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="length mismatch"):
        write_reliability_diagram(out, [0, 1, 1], np.array([[0.5, 0.5], [0.2, 0.8]]))
    assert not out.exists()


@pytest.mark.parametrize("threshold", [None, 0.25])
def test_score_histogram(tmp_path: Path, threshold: float | None) -> None:
    rng = np.random.default_rng(2)
    ood = {"shifted": rng.gamma(3.0, 0.1, 300), "noise": rng.gamma(5.0, 0.1, 200)}
    out = tmp_path / "scores.png"
    write_score_histogram(out, rng.gamma(2.0, 0.05, 1000), ood, threshold)
    assert out.stat().st_size > 5_000
    assert _png_size(out) == (600, 600)


def test_score_histogram_custom_label_and_constant_scores(tmp_path: Path) -> None:
    out = tmp_path / "const.png"
    write_score_histogram(out, np.zeros(10), {"ood": np.zeros(5)}, None, xlabel="entropy (nats)")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_score_histogram_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ood\\['x'\\] contains NaN"):
        write_score_histogram(tmp_path / "a.png", [0.1, 0.2], {"x": np.array([np.nan])}, 0.1)
    with pytest.raises(ValueError, match="id_scores is empty"):
        write_score_histogram(tmp_path / "a.png", [], {}, None)


def test_missing_matplotlib_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    y, probs = _binary_case(20)
    with pytest.raises(ImportError, match=r"pip install 'sbnn\[train\]'"):
        write_reliability_diagram(tmp_path / "r.png", y, probs)
    with pytest.raises(ImportError, match=r"pip install 'sbnn\[train\]'"):
        write_score_histogram(tmp_path / "s.png", [0.1], {"o": np.array([0.2])}, None)
