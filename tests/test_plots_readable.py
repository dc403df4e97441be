"""The plots read on their own (issue 17): integer layer ticks, one panel per measure with a y-range
fitted to its data, labelled energy levels, k95 and the recommended width per layer, and the model
(or family) and token count in every title. The figures are inspected as matplotlib draws them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from sui_onnx import plots, plots_scaling  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "gpt2_w128"


@pytest.fixture()
def figures(monkeypatch):
    """The figures write_plots / write_scaling_plots draw, by file name, instead of PNG files."""
    drawn = {}

    def keep(fig, path):
        drawn[Path(path).name] = fig
        return path

    monkeypatch.setattr(plots, "save_png", keep)
    monkeypatch.setattr(plots_scaling, "save_png", keep)
    yield drawn
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def report():
    if not MODEL.is_dir():
        pytest.skip("fixtures not built")
    from sui_onnx.analyze import AnalysisOptions, analyze
    from sui_onnx.calib import CalibrationSpec

    return analyze(MODEL, CalibrationSpec(tokens=2000, seq_len=50), AnalysisOptions(device="cpu", align=16))


def _titles(fig) -> str:
    return " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes])


def test_every_report_plot_names_the_model_and_the_tokens(report, figures, tmp_path):
    plots.write_plots(report, tmp_path)
    assert set(figures) == {"spectra.png", "utilization.png", "energy.png"}
    for name, fig in figures.items():
        assert "gpt2_w128" in _titles(fig) and "2,000 calibration tokens" in _titles(fig), name


def test_utilization_has_one_panel_per_measure_with_integer_ticks_and_fitted_ranges(report, figures, tmp_path):
    plots.write_plots(report, tmp_path)
    axes = figures["utilization.png"].axes
    assert len(axes) == 4
    for ax, (key, label, _, _) in zip(axes, plots.UTILIZATION_PANELS):
        assert ax.get_title() == label
        assert list(ax.get_xticks()) == [x.layer for x in report.layers]  # 0, 1: never 0.5
        values = [getattr(x, key) for x in report.layers]
        lo, hi = ax.get_ylim()
        assert lo <= min(values) and max(values) <= hi
        assert hi - lo <= 1.2 * (max(values) - min(values)) + 0.2 * max(values)  # fitted, not a fixed 0..1


def test_energy_labels_its_levels_and_marks_k95_and_the_recommended_width_per_layer(report, figures, tmp_path):
    plots.write_plots(report, tmp_path)
    curves, widths = figures["energy.png"].axes
    labels = {t.get_text() for t in curves.texts}
    assert {"90%", "95%", "99%"} <= labels
    rec = report.advice["recommended_width"]
    assert any(line.get_label() == f"recommended {rec} (k95 estimate)" for line in curves.get_lines())
    k95_dots = [line for line in curves.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1]
    assert sorted(int(line.get_xdata()[0]) for line in k95_dots) == sorted(x.energy_widths["k95"] for x in report.layers)
    by_label = {line.get_label(): line for line in widths.get_lines()}
    assert list(by_label["k95"].get_ydata()) == [x.energy_widths["k95"] for x in report.layers]
    assert list(by_label["recommended (estimate)"].get_ydata()) == [rec] * len(report.layers)
    assert list(widths.get_xticks()) == [x.layer for x in report.layers]


def test_many_layers_get_integer_ticks_and_a_colour_bar(report, figures, tmp_path):
    from dataclasses import replace

    layers = [replace(report.layers[i % 2], layer=i) for i in range(20)]
    many = replace(report, layers=layers, eigenvalues=[report.eigenvalues[i % 2] for i in range(20)])
    plots.write_plots(many, tmp_path)
    fig = figures["utilization.png"]
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert len(figures["spectra.png"].axes) == 2  # the spectra and their colour bar of layers


def test_scaling_plots_fit_the_sui_range_and_name_the_family(figures, tmp_path):
    from sui_onnx.report import load_report
    from sui_onnx.scaling import scaling_analysis

    paths = sorted((ROOT / "models" / "reports" / "scaling").glob("llama_w*.json"))
    result = scaling_analysis([load_report(p) for p in paths], labels=[str(p) for p in paths])
    plots_scaling.write_scaling_plots(result, tmp_path)
    sui = figures["scaling_sui.png"].axes[0]
    values = [v for m in result.models for v in [m.median_sui, *m.layer_sui] if v is not None]
    lo, hi = sui.get_ylim()
    assert lo <= min(values) and max(values) <= hi and hi < 0.5  # fitted: llama's SUI stays below 0.2
    for fig in figures.values():
        assert "llama" in _titles(fig) and "32,768 calibration tokens" in _titles(fig)
    ranks = figures["scaling_ranks.png"].axes[0]
    ranks.figure.canvas.draw()
    assert all("times" not in t.get_text() and "^" not in t.get_text() for t in ranks.get_yticklabels())
    assert np.isfinite(result.soft.beta)
