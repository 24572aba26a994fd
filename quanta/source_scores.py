"""Baseline scores as an experiment: load the frozen source and the target, score, write.

What a `scores` job, a study with `baselines` and `quanta --baselines` run: the source
network of `spec.source_weights` (as the transfers load it), once over the target's
training samples (the first `nb_of_target_samples`, the samples a transfer trains on),
and `baseline_scores.json` with the scores of `quanta.score_features`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quanta.any_network import own_source
from quanta.datasets import load_dataset
from quanta.errors import QuantaError
from quanta.score_features import baseline_scores
from quanta.sources import load_source
from quanta_spec import task_label
from quanta_spec.files import atomic_write
from quanta_spec.scores import BASELINE_SCORES_JSON, ScoresSpec


@dataclass
class BaselineResult:
    """The file written and what is in it."""

    path: Path
    scores: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _finite(value: Any) -> Any:
    """The scores with NaN and infinities as None: JSON (and PostgreSQL) carry neither."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def score_source(spec: ScoresSpec, folder: str | Path, *,
                 data_dir: str | Path | None = None) -> BaselineResult:
    """Computes the baseline scores of `spec` and writes `folder/baseline_scores.json`."""
    network = spec.source_model if spec.own_network else spec.source_weights
    if not isinstance(network, str):
        raise QuantaError("the source must be a local path here, not a reference")
    began = time.perf_counter()
    if spec.source_model is not None:
        own = own_source(spec.source_model, spec.preprocess, spec.resize_method)
        own.layers(list(spec.scored_layers))  # checked against the network
        source = own.model
        target = own.prepare(load_dataset(
            spec.target_task, data_dir, image_shape=own.input_shape,
            resize_method=spec.resize_method).take(spec.nb_of_target_samples))
    else:
        target = load_dataset(spec.target_task, data_dir).take(spec.nb_of_target_samples)
        source_data = load_dataset(spec.source_task, data_dir).take(spec.nb_of_target_samples)
        if target.input_shape != source_data.input_shape:
            raise QuantaError(f"the target's images are {target.input_shape}, the source "
                              f"takes {source_data.input_shape}: the source cannot score them")
        source = load_source(spec.source_weights, source_data, spec.width_multiplier,
                             spec.architecture)
    loaded = time.perf_counter()
    scores = _finite(baseline_scores(source, target.x_train, target.y_train,
                                     layers=spec.scored_layers))
    done = time.perf_counter()
    body = {
        "source_task": task_label(spec.source_task),
        "target_task": task_label(spec.target_task),
        "samples": "target training split",
        **scores,
    }
    path = Path(folder) / BASELINE_SCORES_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(body, indent=1) + "\n")
    return BaselineResult(path, scores, {"load": round(loaded - began, 3),
                                         "score": round(done - loaded, 3)})
