"""Study statistics and plots, on records with known values."""

import math
import struct

import numpy as np
import pytest
from scipy import stats

from quanta import plots
from quanta.summary import Missing, RunRecord, describe, summarise


def _record(entry, run, finals, acc, witness=None, epochs=3):
    quantas = {
        layer: {"quantas": {"source": list(np.linspace(0.9, final, epochs + 1))}}
        for layer, final in finals.items()
    }
    return RunRecord(entry, run, quantas, {"categorical_accuracy": acc},
                     None if witness is None else {"categorical_accuracy": witness})


@pytest.fixture
def records():
    rng = np.random.default_rng(3)
    out = []
    for layer in (0, 3):
        for run in range(4):
            out.append(_record(str(layer), run, {str(layer): 0.5 + rng.random() / 4},
                               0.6 + rng.random() / 10, 0.55 + rng.random() / 10))
    for run in range(2):
        out.append(_record("all", run, {str(k): 0.4 + k / 20 + run / 100 for k in range(7)}, 0.7))
    return out


def test_describe_matches_students_t_interval():
    values = [0.61, 0.58, 0.66, 0.6, 0.63]
    d = describe(values)
    sd = np.std(values, ddof=1)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    assert d["mean"] == pytest.approx(np.mean(values))
    assert d["std"] == pytest.approx(sd)
    assert d["ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    assert describe([])["mean"] is None


def test_one_run_has_no_spread_and_unequal_curves_say_so(tmp_path):
    import json

    one = describe([0.4])
    assert one["mean"] == 0.4 and one["std"] is None and one["ci95"] is None
    assert json.loads(json.dumps(one))["std"] is None  # null in JSON, not 0
    # Three runs, the last cut short after one epoch: every epoch is averaged over the
    # runs that reached it, and the counts tell.
    records = [_record("0", 0, {"0": 0.5}, 0.6), _record("0", 1, {"0": 0.7}, 0.7),
               _record("0", 2, {"0": 0.8}, 0.8, epochs=1)]
    entry = summarise(records).entries["0"]
    curves = [r.quantas["0"]["quantas"]["source"] for r in records]
    assert entry["lambda_s_runs_per_epoch"]["0"] == [3, 3, 2, 2]
    assert entry["lambda_s_per_epoch"]["0"][1] == pytest.approx(np.mean([c[1] for c in curves]))
    assert entry["lambda_s_per_epoch"]["0"][3] == pytest.approx(np.mean([curves[0][3],
                                                                         curves[1][3]]))
    assert entry["equal_run_lengths"] is False
    single = summarise(records[:1])
    assert single.entries["0"]["lambda_s"]["0"]["ci95"] is None
    assert single.entries["0"]["equal_run_lengths"] is True
    assert single.as_csv().splitlines()[1].startswith("0,0,1,0.5,,,")
    # Plots draw a single run without an interval, and ragged runs without cutting.
    from matplotlib.container import ErrorbarContainer

    figure = plots.transferability_figure(single, "one run")
    (bar,) = [c for c in figure.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert list(bar.lines[0].get_ydata()) == [0.5]
    for low, high in bar.lines[2][0].get_segments():  # the interval drawn: none
        assert low[1] == pytest.approx(high[1])
    assert plots.accuracy(single, tmp_path / "a.png", "one run").read_bytes()[:4] == b"\x89PNG"
    lines = [{"0": r.quantas["0"]} for r in records]
    tests = [{"0": {"categorical_accuracy": 0.5}, "1": {"categorical_accuracy": 0.6}}]
    ragged = plots.quantas_figure(lines, "ragged", tests)
    assert max(len(line.get_xdata()) for ax in ragged.axes for line in ax.lines) == 4


def test_a_diverged_run_is_counted_not_averaged_in():
    """`summary.json` and `--until` read the same statistics (`quanta_spec.statistics`)."""
    from quanta_spec.statistics import describe, t_halfwidth

    stats = describe([0.5, float("nan"), 0.7, float("inf")])
    assert stats["n"] == 2 and stats["non_finite"] == 2
    assert stats["mean"] == pytest.approx(0.6)
    half = t_halfwidth([0.5, 0.7, float("nan")])
    assert stats["ci95"] == pytest.approx([0.6 - half, 0.6 + half])
    assert "non_finite" not in describe([0.5, 0.7])


def test_summary_per_layer_and_missing_runs(records):
    summary = summarise(records, [Missing("3", 4, "failed: out of memory")])
    assert list(summary.entries) == ["0", "3", "all"]
    zero = [r for r in records if r.entry == "0"]
    finals = [r.quantas["0"]["quantas"]["source"][-1] for r in zero]
    assert summary.entries["0"]["lambda_s"]["0"]["mean"] == pytest.approx(np.mean(finals))
    curve = np.mean([r.quantas["0"]["quantas"]["source"] for r in zero], axis=0)
    assert summary.entries["0"]["lambda_s_per_epoch"]["0"] == pytest.approx(curve.tolist())
    gains = [r.target_metrics["categorical_accuracy"] - r.witness_metrics["categorical_accuracy"]
             for r in zero]
    assert summary.entries["0"]["transfer_gain"]["mean"] == pytest.approx(np.mean(gains))
    assert set(summary.entries["all"]["lambda_s"]) == {str(k) for k in range(7)}
    assert summary.entries["all"]["witness_accuracy"] is None
    as_dict = summary.as_dict()
    assert as_dict["complete"] is False
    assert as_dict["missing"] == [{"entry": "3", "run": 4, "reason": "failed: out of memory"}]
    rows = summary.as_csv().splitlines()
    assert len(rows) == 1 + 1 + 1 + 7  # header, layer 0, layer 3, seven layers of "all"
    assert rows[1].startswith("0,0,4,")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_of_a_readable_size(records, tmp_path):
    summary = summarise(records)
    lines = [{"0": r.quantas["0"]} for r in records if r.entry == "0"]
    for path in (
        plots.quantas_per_epoch(lines, tmp_path / "quantas.png", "digits → digits, layer 0"),
        plots.transferability(summary, tmp_path / "transferability.png", "digits → digits"),
        plots.accuracy(summary, tmp_path / "accuracy.png", "digits → digits"),
    ):
        width, height = _png_size(path)
        assert 500 <= width <= 2000 and 300 <= height <= 1500
    assert not list(tmp_path.glob(".*partial*"))
