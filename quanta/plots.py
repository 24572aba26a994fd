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
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from quanta.summary import Summary, mean_curve
from quanta_spec.files import replacing
from quanta_spec.networks import LAYER_NAMES
from quanta_spec.specs import ordered_layers

_COLORS = plt.get_cmap("tab10").colors
_DPI = 120
#: λ_s in mathtext, so that the s is a subscript as in the paper.
LAMBDA_S = r"$\lambda_s$"
#: Least margin around the data on a λ_s axis: quantas that move by 0.001 must not fill it.
LAMBDA_MARGIN = 0.05


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    try:
        with replacing(path, ".png") as tmp:
            fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _lambda_limits(values: Sequence[float]) -> tuple[float, float]:
    """A λ_s axis that holds the data and the start value with a margin on either side,
    so that noise of a thousandth does not look like a trend."""
    low = min([*values, INITIAL_LAMBDA_S]) - LAMBDA_MARGIN
    high = max([*values, INITIAL_LAMBDA_S]) + LAMBDA_MARGIN
    return max(0.0, low), min(1.0, high)


def quantas_per_epoch(runs: Sequence[dict[str, Any]], path: str | Path, title: str,
                      tests: Sequence[dict[str, dict[str, float]]] = ()) -> Path:
    """`quantas_figure`, saved as a PNG at `path`."""
    return _save(quantas_figure(runs, title, tests), path)


def quantas_figure(runs: Sequence[dict[str, Any]], title: str,
                   tests: Sequence[dict[str, dict[str, float]]] = ()) -> Figure:
    """λ_s after each epoch, one thin line per run, the mean in bold, a colour per layer.

    `runs` are lines of a `quantas_*.jsonl` file (one per run). `tests` are lines of
    `testing_metrics_of_target_per_epoch_*.jsonl` (`test_every_epoch`): the target's
    test accuracy is then drawn beside λ_s, on its own axis at the right. A mean over
    runs of different lengths averages, at each epoch, the runs that reached it.
    """
    fig, ax = plt.subplots(figsize=(7.6 if tests else 7, 4.2))
    layers = ordered_layers(k for run in runs for k in run)
    values: list[float] = []
    ax.axhline(INITIAL_LAMBDA_S, color="0.45", linestyle=":", linewidth=1,
               label=f"{LAMBDA_S} at the start ({INITIAL_LAMBDA_S:.3f})")
    for i, layer in enumerate(layers):
        color = _COLORS[i % len(_COLORS)]
        numbered = [(r, run[layer]["quantas"]["source"]) for r, run in enumerate(runs)
                    if layer in run]
        curves = [curve for _, curve in numbered]
        values += [v for curve in curves for v in curve]
        if len(curves) == 1:  # one run: its line is the result, no mean to draw
            r, curve = numbered[0]
            ax.plot(range(len(curve)), curve, color=color, linewidth=2.2, marker="o",
                    markersize=3, label=f"layer {layer}, run {r}")
            continue
        for j, (_r, curve) in enumerate(numbered):
            ax.plot(range(len(curve)), curve, color=color, alpha=0.35, linewidth=1,
                    label=(f"layer {layer}, runs {numbered[0][0]}–{numbered[-1][0]}"
                           if j == 0 else None))
        mean, _ = mean_curve(curves)
        ax.plot(range(len(mean)), mean, color=color, linewidth=2.2, marker="o", markersize=3,
                label=f"layer {layer}, mean of {len(curves)} runs")
    ax.set_xlabel("epoch (0 = start of training)")
    ax.set_ylabel(f"{LAMBDA_S} (share of source features)")
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if values:
        ax.set_ylim(*_lambda_limits(values))
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
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.12 if tests else 1.01, 1),
              fontsize="small", borderaxespad=0)
    return fig


def layer_positions(summary: Summary) -> dict[str, float]:
    """Where each layer sits on a per-layer axis: the built-in networks' layers at their
    numbers 0-6 (all seven, named as in `LAYER_NAMES`); a user network's named layers one
    after the other in the study's order (graph order), and `all` 1.5 after the last."""
    keys = [e for e in summary.entries if e != "all"]
    if "all" in summary.entries:
        keys += [k for k in summary.entries["all"]["lambda_s"] if k not in keys]
    if all(k.isdigit() for k in keys):
        positions = {str(k): float(k) for k in range(len(LAYER_NAMES))}
    else:
        positions = {k: float(i) for i, k in enumerate(keys)}
    positions["all"] = max(positions.values(), default=0.0) + 1.5
    return positions
#: λ_s when training starts: softmax of the QUANTA layer's initial weights (1.1, -1.1).
INITIAL_LAMBDA_S = 1.0 / (1.0 + math.exp(-2.2))


def _points(summary: Summary, key: str, with_all: bool = False
            ) -> tuple[list[float], list[float], list[list[float]]]:
    """(x, mean, [below, above]) of `key` per entry; `all` after the layers when `with_all`."""
    xs: list[float] = []
    means: list[float] = []
    errs: list[list[float]] = [[], []]
    for entry, data in summary.entries.items():
        if entry == "all" and not with_all:
            continue
        stat = data["lambda_s"].get(entry) if key == "lambda_s" else data.get(key)
        if not stat or not stat["n"]:
            continue
        xs.append(layer_positions(summary)[entry])
        means.append(stat["mean"])
        low, high = stat["ci95"] or (stat["mean"], stat["mean"])  # one run: no interval
        errs[0].append(stat["mean"] - low)
        errs[1].append(high - stat["mean"])
    return xs, means, errs


def _layer_axis(ax: Any, with_all: bool, positions: dict[str, float]) -> None:
    """Ticks at every layer (the built-in networks' names, or a user network's layer
    names, slanted), and the `all at once` entry beyond a line when shown."""
    layers = [k for k in positions if k != "all"]
    numbered = all(k.isdigit() for k in layers)
    ticks: list[float] = [positions[k] for k in layers]
    labels = [LAYER_NAMES[int(k)] for k in layers] if numbered else layers
    last, all_x = max(ticks, default=0.0), positions["all"]
    if with_all:
        ticks.append(all_x)
        labels.append("all at once")
        ax.axvline((last + all_x) / 2, color="0.6", linewidth=0.8)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=0 if numbered else 30,
                       ha="center" if numbered else "right")
    ax.set_xlim(-0.5, (all_x if with_all else last) + 0.5)
    ax.set_xlabel("transferred layer")


def _label_points(ax: Any, xs: Sequence[float], means: Sequence[float],
                  errs: list[list[float]], color: Any, below: bool = False) -> None:
    """The mean written above (or below) each point's interval, so values read without
    the grid and two series' labels do not collide."""
    for x, mean, low, high in zip(xs, means, errs[0], errs[1], strict=True):
        y = max(mean - low, 0.03) if below else min(mean + high, 0.97)
        ax.annotate(f"{mean:.3f}", (x, y), textcoords="offset points",
                    xytext=(0, -10 if below else 4), ha="center", fontsize=7, color=color)


def transferability(summary: Summary, path: str | Path, title: str,
                    baselines: dict[str, Any] | None = None) -> Path:
    """`transferability_figure`, saved as a PNG at `path`."""
    return _save(transferability_figure(summary, title, baselines), path)


#: The per-layer baseline scores, in the order of the plot's legend, with their names.
SCORE_NAMES = {"logme": "LogME", "h_score": "H-score", "transrate": "TransRate", "gbc": "GBC"}


def _scores_panel(ax: Any, baselines: dict[str, Any], positions: dict[str, float]) -> None:
    """Each baseline score per layer, min-max normalised across the layers (the scores
    live on unrelated scales; their ordering of the layers is what compares with λ_s),
    labelled with its Spearman ρ against the mean λ_s."""
    layers = ordered_layers(baselines["layers"])
    correlations = baselines.get("correlations", {})
    for i, (name, label) in enumerate(SCORE_NAMES.items()):
        points = [(positions[k], baselines["layers"][k].get(name)) for k in layers
                  if k in positions]
        points = [(x, v) for x, v in points if isinstance(v, int | float) and math.isfinite(v)]
        if not points:
            continue
        values = [v for _, v in points]
        low, high = min(values), max(values)
        scaled = [(v - low) / (high - low) if high > low else 0.5 for v in values]
        rho = (correlations.get(name) or {}).get("spearman")
        text = f"{label} (ρ = {rho:+.2f})" if isinstance(rho, int | float) else label
        ax.plot([x for x, _ in points], scaled, marker="^", markersize=4, linewidth=1.2,
                color=_COLORS[(i + 2) % len(_COLORS)], label=text)
    source = baselines.get("source") or {}
    whole = ", ".join(f"{name.upper()} {source[name]:.3f}" for name in ("leep", "nce")
                      if isinstance(source.get(name), int | float))
    ax.set_ylabel("baseline score\n(min-max across layers)")
    ax.set_ylim(-0.08, 1.08)
    ax.grid(alpha=0.3)
    ax.set_title(f"Baseline scores of the frozen source (ρ: Spearman with mean {LAMBDA_S})"
                 + (f"\nwhole source: {whole}" if whole else ""), fontsize="small")
    ax.legend(loc="best", fontsize="x-small", ncol=2)


def transferability_figure(summary: Summary, title: str,
                           baselines: dict[str, Any] | None = None) -> Figure:
    """Final λ_s per transferred layer with its 95% confidence interval.

    One point per layer measured alone; with the `all` entry, a second series: the λ_s
    of each of the seven QUANTA layers when they are all transferred at once. The
    dashed line is λ_s when training starts: above it, the target took more of the
    source's features than it was given. With `baselines` (a study summary's, with
    per-layer scores), a panel below shows each baseline score on the same layers.
    """
    with_scores = bool(baselines and baselines.get("layers"))
    if with_scores:
        fig, (ax, below) = plt.subplots(2, 1, figsize=(7.5, 7.0), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.axhline(INITIAL_LAMBDA_S, color="0.45", linestyle="--", linewidth=1,
               label=f"{LAMBDA_S} at the start ({INITIAL_LAMBDA_S:.3f})")
    positions = layer_positions(summary)
    xs, means, errs = _points(summary, "lambda_s")
    if xs:
        # Unjoined: each layer is a measurement of its own, nothing lies between them.
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=4, linewidth=1, linestyle="none",
                    color=_COLORS[0], label="layer transferred alone")
        _label_points(ax, xs, means, errs, _COLORS[0])
    if "all" in summary.entries:
        lam = summary.entries["all"]["lambda_s"]
        layers = ordered_layers(lam)
        all_x = [positions[k] + 0.15 for k in layers]
        all_means = [lam[k]["mean"] for k in layers]
        intervals = [lam[k]["ci95"] or (lam[k]["mean"], lam[k]["mean"]) for k in layers]
        all_errs = [[lam[k]["mean"] - ci[0] for k, ci in zip(layers, intervals, strict=True)],
                    [ci[1] - lam[k]["mean"] for k, ci in zip(layers, intervals, strict=True)]]
        ax.errorbar(all_x, all_means, yerr=all_errs, marker="s", capsize=4, linewidth=1,
                    linestyle="none", color=_COLORS[1],
                    label=f"all {len(layers)} layers at once")
        _label_points(ax, all_x, all_means, all_errs, _COLORS[1], below=True)
    _layer_axis(ax, with_all=False, positions=positions)
    ax.set_ylabel(f"final {LAMBDA_S}: share of source features\n(mean over runs, 95% CI)")
    # 0 to 1, widened to hold every interval whole (few runs make wide Student-t intervals).
    ax.set_ylim(min(0.0, ax.dataLim.y0 - 0.02), max(1.0, ax.dataLim.y1 + 0.02))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    if with_scores:
        assert baselines is not None
        ax.set_xlabel("")
        _scores_panel(below, baselines, positions)
        _layer_axis(below, with_all=False, positions=positions)
    return fig


def accuracy(summary: Summary, path: str | Path, title: str) -> Path:
    """`accuracy_figure`, saved as a PNG at `path`."""
    return _save(accuracy_figure(summary, title), path)


def _witness(summary: Summary) -> dict[str, Any] | None:
    """The witness's accuracy: one statistic for the whole study, since a run's witness
    does not depend on the layer (it has no transfer); the entry with the most runs."""
    stats = [data["witness_accuracy"] for data in summary.entries.values()
             if data.get("witness_accuracy") and data["witness_accuracy"]["n"]]
    return max(stats, key=lambda stat: stat["n"]) if stats else None


def accuracy_figure(summary: Summary, title: str) -> Figure:
    """Test accuracy with transfer (target) per layer, against the witness (no transfer).

    The witness is the same network trained from scratch in each run, whatever the
    layer, so it is one horizontal line with its interval as a band. The axis holds
    every interval whole (with few runs a 95% interval may pass 0 or 1), and the legend
    sits beside the axes, never on the points.
    """
    fig, ax = plt.subplots(figsize=(9, 4.4))
    with_all = "all" in summary.entries
    ends = [0.0, 1.0]
    witness = _witness(summary)
    if witness is not None:
        mean = witness["mean"]
        low, high = witness["ci95"] or (mean, mean)
        ax.axhline(mean, color=_COLORS[3], linewidth=1.5,
                   label=f"without transfer (witness, every layer): {mean:.3f}")
        if high > low:
            ax.axhspan(low, high, color=_COLORS[3], alpha=0.15, linewidth=0,
                       label="witness 95% CI")
        ends += [low, high]
    xs, means, errs = _points(summary, "target_accuracy", with_all=with_all)
    if xs:
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=4, linestyle="none",
                    color=_COLORS[0], label="with transfer (target)")
        _label_points(ax, xs, means, errs, _COLORS[0])
        ends += [m - e for m, e in zip(means, errs[0], strict=True)]
        ends += [m + e for m, e in zip(means, errs[1], strict=True)]
    _layer_axis(ax, with_all=with_all, positions=layer_positions(summary))
    ax.set_ylabel("test accuracy (mean over runs, 95% CI)")
    ax.set_ylim(min(ends) - 0.02, max(ends) + 0.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", borderaxespad=0)
    return fig
