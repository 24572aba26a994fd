"""The client's tables of numbers: baseline scores per layer, a study's stopping rule, and
studies compared (`quanta-client compare`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Per-layer baseline scores, in the order of the columns.
FEATURE_SCORES = ("logme", "h_score", "transrate", "gbc")


def _num(value: Any, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "n/a"


def scores_table(scores: dict[str, Any], out: Callable[[str], None]) -> None:
    """Each layer's scores (beside its mean λ_s when a study measured it), then the
    source's LEEP and NCE."""
    layers = scores.get("layers") or {}
    with_lambda = any("lambda_s" in values for values in layers.values())
    out(f"{'layer':>6}  " + (f"{'mean λ_s':>9}  " if with_lambda else "")
        + "  ".join(f"{name:>10}" for name in FEATURE_SCORES))
    for layer, values in layers.items():
        out(f"{layer:>6}  " + (f"{_num(values.get('lambda_s')):>9}  " if with_lambda else "")
            + "  ".join(f"{_num(values.get(name), '.4g'):>10}" for name in FEATURE_SCORES))
    source = scores.get("source") or {}
    out("whole source: " + ", ".join(f"{name.upper()} {_num(source.get(name))}"
                                     for name in ("leep", "nce")))


def correlations_table(correlations: dict[str, Any], out: Callable[[str], None]) -> None:
    """Each score's rank correlation with the mean final λ_s across layers."""
    out(f"{'score':>10}  {'Spearman ρ':>10}  {'p':>7}  {'Kendall τ':>10}  {'p':>7}  layers")
    for name, c in correlations.items():
        out(f"{name:>10}  {_num(c.get('spearman'), '+.3f'):>10}  "
            f"{_num(c.get('spearman_p'), '.3f'):>7}  {_num(c.get('kendall'), '+.3f'):>10}  "
            f"{_num(c.get('kendall_p'), '.3f'):>7}  {c.get('n', 0)}")


def stopping_table(stopping: dict[str, Any], out: Callable[[str], None]) -> None:
    """Why each layer of a study with `until` stopped, after how many runs."""
    for layer, s in stopping.items():
        out(f"layer {layer}: {s['runs']} runs ({s['succeeded']} succeeded), stopped: "
            f"{s['reason']}, 95% CI half-width {_num(s.get('ci_halfwidth'))} "
            f"(target {_num(s.get('target'), 'g')})")


def _mean_n(stat: dict[str, Any]) -> str:
    return f"{_num(stat['mean'])} ({stat['n']})".rjust(18)


def compare_table(body: dict[str, Any], out: Callable[[str], None]) -> None:
    """Per entry and QUANTA layer: each study's mean final λ_s and runs, then each study's
    difference from the first and Welch's p-value."""
    studies = [s["id"] for s in body["studies"]]
    short = {s: s[:8] for s in studies}
    for study in body["studies"]:
        partial = "" if study.get("complete", True) else f" (partial, {study['status']})"
        out(f"{short[study['id']]}: {study.get('source_task')} → {study.get('target_task')}"
            f"{partial}")
    for difference in body.get("spec_differences", []):
        if difference["fields"]:
            out(f"{short[difference['b']]} differs from {short[difference['a']]} in more than "
                "the seed: " + ", ".join(f"{k} {a!r} → {b!r}"
                                         for k, (a, b) in difference["fields"].items()))
    head = "  ".join(f"{short[s] + ' λ_s (n)':>18}" for s in studies)
    diffs = "  ".join(f"{'Δ ' + short[s]:>10}  {'p':>6}" for s in studies[1:])
    out(f"{'layer':>6}  {'λ of':>5}  {head}  {diffs}")
    for entry, cells in body["entries"].items():
        for layer, cell in cells.items():
            if entry != "all" and layer != entry:
                continue
            stats = "  ".join(_mean_n(cell["studies"][s]) for s in studies)
            compared = "  ".join(f"{_num(c['difference'], '+.4f'):>10}  "
                                 f"{_num(c['p_value'], '.3f'):>6}"
                                 for c in cell["comparisons"])
            out(f"{entry:>6}  {layer:>5}  {stats}  {compared}")
