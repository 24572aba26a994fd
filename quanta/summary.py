"""Statistics over runs: what a study reports per transferred layer.

For every entry of a study (a layer number, or `all` when every layer is transferred at
once) and every QUANTA layer in it: the final λ_s over runs (mean, standard deviation,
95% confidence interval from Student's t), the mean λ_s curve over epochs, and the test
accuracy of the target, of the witness and their difference (the transfer gain).
Runs whose results are missing are listed, never silently dropped. The statistics are
`quanta_spec.statistics.describe`'s (what `--until` stops on): with a single run the
spread is unknown (None, not 0), and a diverged run's non-finite value is counted, not
averaged in. Curves of runs
that lasted different numbers of epochs are averaged over the runs that reached each
epoch, and `lambda_s_runs_per_epoch` says how many did.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quanta_spec.specs import entry_order, ordered_layers
from quanta_spec.statistics import describe

ACCURACY = "categorical_accuracy"


@dataclass
class RunRecord:
    """The results of one run of one entry, as read from its JSONL files."""

    entry: str  # "0".."6" or "all"
    run: int
    quantas: dict[str, Any]  # one line of quantas_*.jsonl
    target_metrics: dict[str, float]
    witness_metrics: dict[str, float] | None = None


@dataclass
class Missing:
    entry: str
    run: int
    reason: str


def mean_curve(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[int]]:
    """The mean of curves of possibly different lengths, epoch by epoch, over the curves
    that reach that epoch; and how many do at each epoch."""
    length = max((len(c) for c in curves), default=0)
    means, counts = [], []
    for epoch in range(length):
        values = [c[epoch] for c in curves if len(c) > epoch]
        means.append(float(np.mean(values)))
        counts.append(len(values))
    return means, counts


@dataclass
class Summary:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "missing": [m.__dict__ for m in self.missing],
            "complete": not self.missing,
        }

    def as_csv(self, scores: Mapping[str, Mapping[str, float | None]] | None = None) -> str:
        """One row per (entry, QUANTA layer); with `scores` (by layer, the baseline
        scores of the study's source), each row ends with the scores of its QUANTA layer."""
        names = sorted({name for values in (scores or {}).values() for name in values})
        out = io.StringIO()
        writer = csv.writer(out)
        columns = ["entry", "quanta_layer", "runs", "lambda_s_mean", "lambda_s_std",
                   "lambda_s_ci95_low", "lambda_s_ci95_high"]
        for metric in ("target_accuracy", "witness_accuracy", "transfer_gain"):
            columns += [f"{metric}_mean", f"{metric}_std", f"{metric}_ci95_low",
                        f"{metric}_ci95_high"]
        writer.writerow(columns + names)
        for entry, data in self.entries.items():
            for layer, lam in data["lambda_s"].items():
                row = [entry, layer, lam["n"], lam["mean"], _blank(lam["std"]),
                       *(lam["ci95"] or ["", ""])]
                for metric in ("target_accuracy", "witness_accuracy", "transfer_gain"):
                    d = data.get(metric)
                    if d and d["n"]:
                        row += [d["mean"], _blank(d["std"]), *(d["ci95"] or ["", ""])]
                    else:
                        row += ["", "", "", ""]
                layer_scores = (scores or {}).get(layer, {})
                row += [_blank(layer_scores.get(name)) for name in names]
                writer.writerow(row)
        return out.getvalue()


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


def _entry_order(entry: str) -> tuple[int, int]:
    return entry_order(entry)


def summarise(records: Iterable[RunRecord], missing: Iterable[Missing] = ()) -> Summary:
    by_entry: dict[str, list[RunRecord]] = {}
    for record in records:
        by_entry.setdefault(record.entry, []).append(record)
    summary = Summary(missing=list(missing))
    for entry in sorted(by_entry, key=_entry_order):
        runs = sorted(by_entry[entry], key=lambda r: r.run)
        layers = ordered_layers(k for r in runs for k in r.quantas)
        lambda_s, curves, counts = {}, {}, {}
        for layer in layers:
            histories = [r.quantas[layer]["quantas"]["source"] for r in runs if layer in r.quantas]
            lambda_s[layer] = describe([h[-1] for h in histories])
            curves[layer], counts[layer] = mean_curve(histories)
        target = [r.target_metrics[ACCURACY] for r in runs]
        witnessed = [r for r in runs if r.witness_metrics is not None]
        witness = [r.witness_metrics[ACCURACY] for r in witnessed]
        gain = [r.target_metrics[ACCURACY] - r.witness_metrics[ACCURACY] for r in witnessed]
        summary.entries[entry] = {
            "runs": [r.run for r in runs],
            "lambda_s": lambda_s,
            "lambda_s_per_epoch": curves,
            # Runs averaged at each epoch: fewer at the end when runs differ in length.
            "lambda_s_runs_per_epoch": counts,
            "equal_run_lengths": all(len(set(c)) == 1 for c in counts.values()),
            "target_accuracy": describe(target),
            "witness_accuracy": describe(witness) if witnessed else None,
            "transfer_gain": describe(gain) if witnessed else None,
        }
    return summary
