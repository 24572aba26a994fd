"""Figures a researcher reads at a glance: quanta over epochs, transferability per layer.

Rendered headless (Agg) to PNG, so workers without a display can draw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from quanta.summary import Summary

_COLORS = plt.get_cmap("tab10").colors
_DPI = 120


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def quantas_per_epoch(runs: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """λ_s after each epoch, one thin line per run, the mean in bold, a colour per layer.

    `runs` are lines of a `quantas_*.jsonl` file (one per run).
    """
    fig, ax = plt.subplots(figsize=(7, 4.2))
    layers = sorted({k for run in runs for k in run}, key=int)
    for i, layer in enumerate(layers):
        color = _COLORS[i % len(_COLORS)]
        curves = [run[layer]["quantas"]["source"] for run in runs if layer in run]
        for curve in curves:
            ax.plot(range(len(curve)), curve, color=color, alpha=0.35, linewidth=1)
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length] for c in curves], axis=0)
        ax.plot(range(length), mean, color=color, linewidth=2.2, marker="o", markersize=3,
                label=f"layer {layer}")
    ax.set_xlabel("epoch (0 = start of training)")
    ax.set_ylabel("λ_s (share of source features)")
    ax.set_title(title)
    # Quantas often move by less than a percent: let the axis zoom in on them.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.get_major_formatter().set_useOffset(False)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", ncol=2 if len(layers) > 4 else 1)
    return _save(fig, path)


def _points(summary: Summary, key: str) -> tuple[list[int], list[float], list[list[float]]]:
    xs, means, errs = [], [], [[], []]
    for entry, data in summary.entries.items():
        if entry == "all":
            continue
        stat = data["lambda_s"][entry] if key == "lambda_s" else data.get(key)
        if not stat or not stat["n"]:
            continue
        xs.append(int(entry))
        means.append(stat["mean"])
        errs[0].append(stat["mean"] - stat["ci95"][0])
        errs[1].append(stat["ci95"][1] - stat["mean"])
    return xs, means, errs


def transferability(summary: Summary, path: str | Path, title: str) -> Path:
    """Final λ_s per transferred layer with its 95% confidence interval."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs, means, errs = _points(summary, "lambda_s")
    if xs:
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=4, linewidth=2,
                    color=_COLORS[0], label="one layer transferred")
    if "all" in summary.entries:
        lam = summary.entries["all"]["lambda_s"]
        layers = sorted(lam, key=int)
        ax.errorbar(
            [int(k) for k in layers], [lam[k]["mean"] for k in layers],
            yerr=[[lam[k]["mean"] - lam[k]["ci95"][0] for k in layers],
                  [lam[k]["ci95"][1] - lam[k]["mean"] for k in layers]],
            marker="s", capsize=4, linestyle="--", color=_COLORS[1],
            label="all layers at once",
        )
    ax.set_xticks(range(7))
    ax.set_xticklabels(["conv 0", "conv 1", "conv 2", "conv 3", "conv 4", "conv 5", "dense 6"])
    ax.set_xlabel("transferred layer")
    ax.set_ylabel("final λ_s (mean, 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def accuracy(summary: Summary, path: str | Path, title: str) -> Path:
    """Test accuracy with transfer (target) and without (witness), per layer."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, color in (("target_accuracy", "with transfer (target)", _COLORS[0]),
                              ("witness_accuracy", "without transfer (witness)", _COLORS[3])):
        xs, means, errs = _points(summary, key)
        if xs:
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=4, linewidth=2, color=color,
                        label=label)
    ax.set_xticks(range(7))
    ax.set_xlabel("transferred layer")
    ax.set_ylabel("test accuracy (mean, 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)
