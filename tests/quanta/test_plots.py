"""What the plots say, read off their figures (axes limits, legends, artists), not pixels."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from quanta import plots
from quanta.summary import RunRecord, summarise


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _legend_beside_axes(fig, ax):
    """The legend's box lies right of the axes' box: it covers no point."""
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    return legend.x0 >= ax.get_window_extent().x1


def test_quantas_axis_shows_the_start_and_a_sensible_range():
    # λ_s that barely moves (a thousandth): the axis must not zoom in on the noise.
    runs = [{"2": {"quantas": {"source": [plots.INITIAL_LAMBDA_S + d for d in
                                          (0, 0.0004 * r, -0.0007, 0.001 * r)]}}}
            for r in range(3)]
    fig = plots.quantas_figure(runs, r"$\lambda_s$ per epoch")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    values = [v for run in runs for v in run["2"]["quantas"]["source"]]
    assert high - low >= 2 * plots.LAMBDA_MARGIN
    assert low <= min(values) - plots.LAMBDA_MARGIN + 1e-9
    assert high >= max(values) + plots.LAMBDA_MARGIN - 1e-9
    assert low < plots.INITIAL_LAMBDA_S < high
    texts = _legend_texts(ax)
    assert any("runs 0–2" in t for t in texts), texts  # the thin per-run lines
    assert any("mean of 3 runs" in t for t in texts), texts
    assert any("at the start" in t for t in texts), texts
    assert r"$\lambda_s$" in ax.get_ylabel()
    assert _legend_beside_axes(fig, ax)


def test_quantas_axis_follows_a_large_move_and_stays_in_0_1():
    runs = [{"0": {"quantas": {"source": [plots.INITIAL_LAMBDA_S, 0.5, 0.02]}}}]
    ax = plots.quantas_figure(runs, "moved").axes[0]
    low, high = ax.get_ylim()
    assert low == 0.0 and high >= plots.INITIAL_LAMBDA_S + plots.LAMBDA_MARGIN - 1e-9
    assert any("run 0" in t for t in _legend_texts(ax))


def _records():
    """Three runs of layers 0 and 3 with the same witness per run (as a seeded study has),
    and target accuracies spread enough for the 95% interval to pass 1."""
    out = []
    for layer, accs in (("0", (0.97, 0.99, 0.75)), ("3", (0.6, 0.62, 0.64))):
        for run, acc in enumerate(accs):
            quantas = {layer: {"quantas": {"source": list(np.linspace(0.9, 0.7, 4))}}}
            out.append(RunRecord(layer, run, quantas, {"categorical_accuracy": acc},
                                 {"categorical_accuracy": 0.5 + run / 50}))
    return out


def test_accuracy_draws_the_witness_once_and_whole_intervals():
    summary = summarise(_records())
    fig = plots.accuracy_figure(summary, "accuracy")
    ax = fig.axes[0]
    texts = _legend_texts(ax)
    assert sum("witness" in t and "CI" not in t for t in texts) == 1, texts
    assert sum("with transfer" in t for t in texts) == 1, texts
    low, high = ax.get_ylim()
    for data in summary.entries.values():
        ci = data["target_accuracy"]["ci95"]
        assert low <= ci[0] and ci[1] <= high, (ci, (low, high))
    assert summary.entries["0"]["target_accuracy"]["ci95"][1] > 1  # the case under test
    assert _legend_beside_axes(fig, ax)


def test_transferability_labels_lambda_s_as_a_subscript():
    ax = plots.transferability_figure(summarise(_records()), "t").axes[0]
    assert r"$\lambda_s$" in ax.get_ylabel()
    assert any(r"$\lambda_s$" in t for t in _legend_texts(ax))


def test_transferability_holds_every_interval_whole():
    records = [RunRecord("0", run, {"0": {"quantas": {"source": [0.9, final]}}},
                         {"categorical_accuracy": 0.5}) for run, final in ((0, 0.99), (1, 0.8))]
    summary = summarise(records)
    low, high = summary.entries["0"]["lambda_s"]["0"]["ci95"]
    assert high > 1  # two runs: a wide interval, the case under test
    ax = plots.transferability_figure(summary, "t").axes[0]
    assert ax.get_ylim()[0] <= low and high <= ax.get_ylim()[1]
