"""The comparison plot of studies: final λ_s per layer, one series per study.

Drawn by the API process from the comparison body (`quanta_jobs.compare`), with
matplotlib's object API on the Agg canvas only: no pyplot state shared between the
request threads, no display, and nothing of TensorFlow or the `quanta` library.
"""

from __future__ import annotations

import io
from typing import Any

from quanta_spec.networks import LAYER_NAMES
from quanta_spec.specs import ordered_layers

#: Below this p-value a layer's difference from the first study is starred.
STAR_BELOW = 0.05


def _series(body: dict[str, Any]) -> tuple[str, list[tuple[int, str, str, str]]]:
    """What goes on the x axis: (label, [(x, entry, QUANTA layer, tick label)]): each layer
    measured alone, or the layers of the all-at-once entry when no study has single layers.
    The built-in networks' layers sit at their numbers; a user network's names one after
    the other in the body's order."""
    singles = [(e, e) for e in body["entries"] if e != "all" and e in body["entries"][e]]
    label = "layer transferred alone"
    if not singles:
        singles = [("all", k) for k in ordered_layers(body["entries"].get("all", {}))]
        label = f"layer, all {len(singles)} transferred at once"
    numbered = all(layer.isdigit() for _, layer in singles)
    points = [(int(layer) if numbered else i, entry, layer,
               LAYER_NAMES[int(layer)] if numbered and int(layer) < len(LAYER_NAMES)
               else layer) for i, (entry, layer) in enumerate(singles)]
    return label, sorted(points) if numbered else points


def comparison_png(body: dict[str, Any], dpi: int = 120) -> bytes:
    """PNG bytes of the comparison `body`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.8, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    label, points = _series(body)
    studies = body["studies"]
    width = 0.6 / max(1, len(studies))
    for i, study in enumerate(studies):
        xs, means, low, high = [], [], [], []
        for x, entry, layer, _ in points:
            stat = body["entries"][entry][layer]["studies"][study["id"]]
            if not stat["n"]:
                continue
            mean = stat["mean"]
            ci = stat["ci95"] or [mean, mean]
            xs.append(x + (i - (len(studies) - 1) / 2) * width)
            means.append(mean)
            low.append(mean - ci[0])
            high.append(ci[1] - mean)
        name = f"{study['id'][:8]} ({study.get('source_task')} → {study.get('target_task')})"
        if not study.get("complete", True):
            name += ", partial"
        ax.errorbar(xs, means, yerr=[low, high], marker="o", capsize=3, linestyle="none",
                    color=colors[i % len(colors)], label=name)
    for x, entry, layer, _ in points:  # a star where a study differs from the first
        comparisons = body["entries"][entry][layer]["comparisons"]
        if any(c["p_value"] is not None and c["p_value"] < STAR_BELOW for c in comparisons):
            ax.annotate("*", (x, 1.0), xytext=(0, -14), textcoords="offset points",
                        ha="center", fontsize=14)
    ticks = [x for x, _, _, _ in points]
    ax.set_xticks(ticks)
    ax.set_xticklabels([tick for _, _, _, tick in points],
                       rotation=0 if all(p[2].isdigit() for p in points) else 30)
    ax.set_xlim(min(ticks, default=0) - 0.6, max(ticks, default=6) + 0.6)
    ax.set_ylim(0, 1)
    ax.set_xlabel(label)
    ax.set_ylabel("final λ_s (mean over runs, 95% CI)")
    title = f"Studies compared (*: Welch p < {STAR_BELOW:g} against {body['reference'][:8]})"
    differing = sorted({name for d in body.get("spec_differences", []) for name in d["fields"]})
    if differing:  # a star then says nothing of chance alone
        title += "\nspecs differ in " + ", ".join(differing)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi, bbox_inches="tight")
    return out.getvalue()
