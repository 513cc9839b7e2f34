"""app.evaluate.regression_plots: the forecast and coverage PNGs are written and valid."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from app.bnn.regression import GaussianPredictive  # noqa: E402
from app.evaluate.regression import coverage_curve, summarise  # noqa: E402
from app.evaluate.regression_plots import write_coverage_plot, write_forecast_plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _case(rows: int = 400) -> tuple[np.ndarray, GaussianPredictive]:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(rows, dtype=torch.float64)
    signal = torch.sin(t / 12.0)[None, :, None]
    means = signal + 0.1 * torch.randn(8, rows, 1, generator=gen, dtype=torch.float64)
    variances = torch.full((8, rows, 1), 0.04, dtype=torch.float64)
    y = (signal[0, :, 0] + 0.2 * torch.randn(rows, generator=gen, dtype=torch.float64)).numpy()
    return y, GaussianPredictive(means, variances)


def test_forecast_plot(tmp_path: Path) -> None:
    y, predictive = _case()
    summary = summarise(predictive, y)
    out = write_forecast_plot(tmp_path / "a" / "forecast.png", y, summary, slice(100, 300), "test", "kWh")
    assert out == tmp_path / "a" / "forecast.png"
    assert out.stat().st_size > 5_000
    assert _png_size(out) == (1200, 480)  # 10 x 4 in at 120 dpi
    hours = np.arange(50) * 3
    out2 = write_forecast_plot(tmp_path / "b.png", y, summary, np.arange(50), "", "", levels=(0.95,), x=hours)
    assert out2.read_bytes()[:8] == PNG_MAGIC


def test_forecast_plot_rejects_bad_input(tmp_path: Path) -> None:
    y, predictive = _case(50)
    summary = summarise(predictive, y, levels=(0.5,))
    with pytest.raises(ValueError, match="lacks interval levels"):
        write_forecast_plot(tmp_path / "f.png", y, summary, slice(0, 10), "", "", levels=(0.9,))
    with pytest.raises(ValueError, match="length mismatch"):
        write_forecast_plot(tmp_path / "f.png", y[:-1], summary, slice(0, 10), "", "", levels=(0.5,))
    with pytest.raises(ValueError, match="non-empty"):
        write_forecast_plot(tmp_path / "f.png", y, summary, slice(10, 10), "", "", levels=(0.5,))
    with pytest.raises(ValueError, match="x must have shape"):
        write_forecast_plot(tmp_path / "f.png", y, summary, slice(0, 10), "", "", levels=(0.5,), x=np.arange(3))
    assert not (tmp_path / "f.png").exists()


def test_coverage_plot(tmp_path: Path) -> None:
    y, predictive = _case()
    early, late = slice(0, 200), slice(200, 400)
    curves = {
        "test": coverage_curve(
            summarise(GaussianPredictive(predictive.means[:, early], predictive.variances[:, early]), y[early]),
            y[early],
        ),
        "later-period": coverage_curve(
            summarise(GaussianPredictive(predictive.means[:, late], predictive.variances[:, late]), y[late]), y[late]
        ),
    }
    out = write_coverage_plot(tmp_path / "coverage.png", curves, "coverage")
    assert out.stat().st_size > 5_000
    assert _png_size(out) == (600, 600)
    with pytest.raises(ValueError, match="empty"):
        write_coverage_plot(tmp_path / "x.png", {}, "")
    with pytest.raises(ValueError, match="levels"):
        write_coverage_plot(tmp_path / "x.png", {"a": (np.ones(3), np.ones(2))}, "")


def test_a_gap_in_time_breaks_the_forecast_into_runs() -> None:
    from app.evaluate.regression_plots import _segments

    hours = np.array(["2013-03-04T00", "2013-03-04T02", "2013-03-04T04", "2013-03-18T00", "2013-03-18T02"])
    assert _segments(hours.astype("datetime64[h]")) == [slice(0, 3), slice(3, 5)]
    assert _segments(np.arange(6)) == [slice(0, 6)]
    assert _segments(np.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])) == [slice(0, 3), slice(3, 6)]
