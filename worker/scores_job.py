"""A `scores` job: the baseline transferability scores of a frozen source, no training.

Its result holds the scores themselves (small: a few numbers per layer) beside the
path of `baseline_scores.json`, written in the job's experiment folder as the local
`quanta --baselines` writes it. TensorFlow is imported inside `run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quanta_spec.file_names import experiment_dir
from quanta_spec.scores import ScoresSpec


def run(spec: ScoresSpec, output: Path, data_dir: Path | None) -> dict[str, Any]:
    from quanta.source_scores import score_source

    folder = experiment_dir(output, spec.source_task, spec.target_task)
    result = score_source(spec, folder, data_dir=data_dir)
    return {
        "file": result.path.relative_to(output).as_posix(),
        **result.scores,
        "timings": result.timings,
    }
