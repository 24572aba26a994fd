"""Figures a researcher reads at a glance: quanta over epochs, transferability per layer.

Rendered headless (Agg) to PNG, so workers without a display can draw them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from quanta.summary import Summary, mean_curve
from quanta_spec.files import replacing

_COLORS = plt.get_cmap("tab10").colors
_DPI = 120


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    try:
        with replacing(path, ".png") as tmp:
            fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def quantas_per_epoch(runs: Sequence[dict[str, Any]], path: str | Path, title: str,
                      tests: Sequence[dict[str, dict[str, float]]] = ()) -> Path:
    """λ_s after each epoch, one thin line per run, the mean in bold, a colour per layer.

    `runs` are lines of a `quantas_*.jsonl` file (one per run). `tests` are lines of
    `testing_metrics_of_target_per_epoch_*.jsonl` (`test_every_epoch`): the target's
    test accuracy is then drawn beside λ_s, on its own axis at the right. A mean over
    runs of different lengths averages, at each epoch, the runs that reached it.
    """
    fig, ax = plt.subplots(figsize=(7.6 if tests else 7, 4.2))
    layers = sorted({k for run in runs for k in run}, key=int)
    for i, layer in enumerate(layers):
        color = _COLORS[i % len(_COLORS)]
        curves = [run[layer]["quantas"]["source"] for run in runs if layer in run]
        for curve in curves:
            ax.plot(range(len(curve)), curve, color=color, alpha=0.35, linewidth=1)
        mean, _ = mean_curve(curves)
        ax.plot(range(len(mean)), mean, color=color, linewidth=2.2, marker="o", markersize=3,
                label=f"layer {layer}")
    ax.set_xlabel("epoch (0 = start of training)")
    ax.set_ylabel("λ_s (share of source features)")
    ax.set_title(title)
    # Quantas often move by less than a percent: let the axis zoom in on them.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.get_major_formatter().set_useOffset(False)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if tests:
        right = ax.twinx()
        # After epoch e is x = e + 1: x = 0 is the start of training, as for λ_s.
        accuracy_curves = [[run[str(e)]["categorical_accuracy"]
                            for e in sorted(map(int, run))] for run in tests]
        for curve in accuracy_curves:
            right.plot(range(1, len(curve) + 1), curve, color="0.35", alpha=0.35,
                       linewidth=1, linestyle="--")
        mean, _ = mean_curve(accuracy_curves)
        line = right.plot(range(1, len(mean) + 1), mean, color="0.2", linewidth=1.8,
                          linestyle="--", marker="s", markersize=3,
                          label="target test accuracy")
        right.set_ylabel("target test accuracy (dashed)")
        right.set_ylim(0, 1)
        handles, labels = [*handles, *line], [*labels, "target test accuracy"]
    ax.legend(handles, labels, loc="best", fontsize="small",
              ncol=2 if len(labels) > 4 else 1)
    return _save(fig, path)


#: Tick labels of the transferable layers (their numbers, as in file names).
LAYER_NAMES = ("conv 0", "conv 1", "conv 2", "conv 3", "conv 4", "conv 5", "dense 6")
#: Where the "all layers at once" entry sits on a per-layer axis.
ALL_X = 7.5
#: λ_s when training starts: softmax of the QUANTA layer's initial weights (1.1, -1.1).
INITIAL_LAMBDA_S = 1.0 / (1.0 + math.exp(-2.2))


def _points(summary: Summary, key: str, with_all: bool = False
            ) -> tuple[list[float], list[float], list[list[float]]]:
    """(x, mean, [below, above]) of `key` per entry; `all` at ALL_X when `with_all`."""
    xs: list[float] = []
    means: list[float] = []
    errs: list[list[float]] = [[], []]
    for entry, data in summary.entries.items():
        if entry == "all" and not with_all:
            continue
        stat = data["lambda_s"].get(entry) if key == "lambda_s" else data.get(key)
        if not stat or not stat["n"]:
            continue
        xs.append(ALL_X if entry == "all" else int(entry))
        means.append(stat["mean"])
        low, high = stat["ci95"] or (stat["mean"], stat["mean"])  # one run: no interval
        errs[0].append(stat["mean"] - low)
        errs[1].append(high - stat["mean"])
    return xs, means, errs


def _layer_axis(ax: Any, with_all: bool) -> None:
    ticks: list[float] = list(range(len(LAYER_NAMES)))
    labels = list(LAYER_NAMES)
    if with_all:
        ticks.append(ALL_X)
        labels.append("all at once")
        ax.axvline((len(LAYER_NAMES) - 1 + ALL_X) / 2, color="0.6", linewidth=0.8)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels)
    ax.set_xlim(-0.5, (ALL_X if with_all else len(LAYER_NAMES) - 1) + 0.5)
    ax.set_xlabel("transferred layer")


def _label_points(ax: Any, xs: Sequence[float], means: Sequence[float],
                  errs: list[list[float]], color: Any, below: bool = False) -> None:
    """The mean written above (or below) each point's interval, so values read without
    the grid and two series' labels do not collide."""
    for x, mean, low, high in zip(xs, means, errs[0], errs[1], strict=True):
        y = max(mean - low, 0.03) if below else min(mean + high, 0.97)
        ax.annotate(f"{mean:.3f}", (x, y), textcoords="offset points",
                    xytext=(0, -10 if below else 4), ha="center", fontsize=7, color=color)


def transferability(summary: Summary, path: str | Path, title: str) -> Path:
    """Final λ_s per transferred layer with its 95% confidence interval.

    One point per layer measured alone; with the `all` entry, a second series: the λ_s
    of each of the seven QUANTA layers when they are all transferred at once. The
    dashed line is λ_s when training starts: above it, the target took more of the
    source's features than it was given.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.axhline(INITIAL_LAMBDA_S, color="0.45", linestyle="--", linewidth=1,
               label=f"λ_s at the start ({INITIAL_LAMBDA_S:.3f})")
    xs, means, errs = _points(summary, "lambda_s")
    if xs:
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=4, linewidth=1, linestyle=":",
                    color=_COLORS[0], label="layer transferred alone")
        _label_points(ax, xs, means, errs, _COLORS[0])
    if "all" in summary.entries:
        lam = summary.entries["all"]["lambda_s"]
        layers = sorted(lam, key=int)
        all_x = [int(k) + 0.15 for k in layers]
        all_means = [lam[k]["mean"] for k in layers]
        intervals = [lam[k]["ci95"] or (lam[k]["mean"], lam[k]["mean"]) for k in layers]
        all_errs = [[lam[k]["mean"] - ci[0] for k, ci in zip(layers, intervals, strict=True)],
                    [ci[1] - lam[k]["mean"] for k, ci in zip(layers, intervals, strict=True)]]
        ax.errorbar(all_x, all_means, yerr=all_errs, marker="s", capsize=4, linewidth=1,
                    linestyle=":", color=_COLORS[1], label="all seven layers at once")
        _label_points(ax, all_x, all_means, all_errs, _COLORS[1], below=True)
    _layer_axis(ax, with_all=False)
    ax.set_ylabel("final λ_s: share of source features\n(mean over runs, 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


def accuracy(summary: Summary, path: str | Path, title: str) -> Path:
    """Test accuracy with transfer (target) and without (witness), per layer.

    The two series are drawn side by side at each layer so their intervals do not
    hide each other; the `all` entry has a column of its own at the right.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    with_all = "all" in summary.entries
    for key, label, color, shift in (
        ("target_accuracy", "with transfer (target)", _COLORS[0], -0.12),
        ("witness_accuracy", "without transfer (witness)", _COLORS[3], 0.12),
    ):
        xs, means, errs = _points(summary, key, with_all=with_all)
        if xs:
            xs = [x + shift for x in xs]
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=4, linestyle="none",
                        color=color, label=label)
            _label_points(ax, xs, means, errs, color)
    _layer_axis(ax, with_all=with_all)
    ax.set_ylabel("test accuracy (mean over runs, 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)
