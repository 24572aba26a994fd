"""An experiment's files as an MLflow run: what a researcher's tracker shows of a job.

Read from the files the library wrote (the seed's JSONL files, the plots), so it runs
after the job, never inside its training loop, and it needs no TensorFlow: the spec as
params, every epoch's metrics and each layer's λ_s with the epoch as the step, the final
test metrics, the JSONL, JSON and PNG files as artifacts. A study is a parent run with
its summary (per layer: mean final λ_s and its 95% interval, target accuracy) and its
jobs' runs nested under it (MLflow's `mlflow.parentRunId` tag).

A tracking server that is down or slow never fails or holds a job: `export_bounded`
runs the export in a thread of its own, waits at most `timeout_s`, and logs a warning
when it does not finish (the export is dropped, not retried). It uses `mlflow-skinny`,
the client only (the `mlflow` extra).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The default MLflow experiment of QUANTA's runs.
DEFAULT_EXPERIMENT = "quanta"
#: Files that go to a run's artifacts (models stay with the job: they are large).
ARTIFACT_SUFFIXES = (".jsonl", ".json", ".png", ".csv")
#: MLflow's limit on a param's value; longer values are cut.
MAX_PARAM_CHARS = 6000
_FILE = re.compile(r"^(?P<kind>.+)_r_(?P<run>\d+)_l_(?P<layer>[A-Za-z0-9_.\-]+)\.jsonl$")


def _client(tracking_uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RuntimeError("MLflow export needs the mlflow-skinny package: pip install "
                           "'quanta-service[mlflow]'") from None
    return MlflowClient(tracking_uri=tracking_uri)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _metric_key(text: str) -> str:
    """MLflow takes letters, digits, `_ - . / ` and spaces in a key."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def params_of(spec: Mapping[str, Any]) -> dict[str, str]:
    """A spec as MLflow params: one per field, references and lists as JSON."""
    out = {}
    for key, value in spec.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[key] = text[:MAX_PARAM_CHARS]
    return out


def _files(folder: Path, layer: str | None) -> list[Path]:
    """The experiment's JSONL files: with `layer`, only that layer's (several layers'
    experiments share a folder, `{source}_to_{target}`)."""
    found = []
    for path in sorted(folder.glob("*.jsonl")):
        match = _FILE.match(path.name)
        if match and (layer is None or match["layer"] == layer):
            found.append(path)
    return found


def metrics_of(folder: Path, layer: str | None = None) -> list[tuple[str, float, int]]:
    """(key, value, step) of every epoch in an experiment folder's JSONL files: λ_s per
    layer (`lambda_s/LAYER`, step 0 the start), training metrics (`target/NAME`,
    `witness/NAME`, step = epoch from 1), test metrics per epoch (`test/NAME`) and at the
    end (`final_test/NAME`, `final_witness_test/NAME`). Several runs in one job: each key
    gets `run_R/` in front."""
    found: list[tuple[str, float, int]] = []
    files = _files(folder, layer)
    runs = {int(_FILE.match(p.name).group("run")) for p in files}  # type: ignore[union-attr]
    for path in files:
        match = _FILE.match(path.name)
        assert match is not None
        prefix = f"run_{match['run']}/" if len(runs) > 1 else ""
        kind = match["kind"]
        for record in _lines(path)[-1:]:  # the last line: this job's (JSONL files append)
            if kind == "quantas":
                for layer, entry in record.items():
                    for step, value in enumerate(entry["quantas"]["source"]):
                        found.append((f"{prefix}lambda_s/{layer}", float(value), step))
            elif kind in ("training_metrics_of_target", "training_metrics_of_witness",
                          "testing_metrics_of_target_per_epoch"):
                name = {"training_metrics_of_target": "target",
                        "training_metrics_of_witness": "witness",
                        "testing_metrics_of_target_per_epoch": "test"}[kind]
                for epoch, metrics in record.items():
                    for metric, value in metrics.items():
                        if isinstance(value, int | float):
                            found.append((f"{prefix}{name}/{metric}", float(value),
                                          int(epoch) + 1))
            elif kind in ("testing_metrics_of_target", "testing_metrics_of_witness",
                          "testing_metrics_of_source"):
                name = kind.removeprefix("testing_metrics_of_")
                for metric, value in record.items():
                    if isinstance(value, int | float):
                        found.append((f"{prefix}final_{name}/{metric}", float(value), 0))
    return [(_metric_key(k), v, s) for k, v, s in found]


def summary_metrics(summary: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """A study summary's per-layer figures: mean final λ_s, its 95% interval, the target's
    accuracy."""
    out = []
    for entry, data in summary.get("entries", {}).items():
        for layer, stat in (data.get("lambda_s") or {}).items():
            name = layer if entry != "all" else f"all.{layer}"
            if stat and stat.get("mean") is not None:
                out.append((f"lambda_s_mean/{name}", float(stat["mean"]), 0))
                if stat.get("ci95"):
                    out.append((f"lambda_s_ci95_low/{name}", float(stat["ci95"][0]), 0))
                    out.append((f"lambda_s_ci95_high/{name}", float(stat["ci95"][1]), 0))
        accuracy = data.get("target_accuracy") or {}
        if accuracy.get("mean") is not None:
            out.append((f"target_accuracy_mean/{entry}", float(accuracy["mean"]), 0))
    return [(_metric_key(k), v, s) for k, v, s in out]


def _log(client: Any, run_id: str, metrics: Iterable[tuple[str, float, int]],
         params: Mapping[str, str], tags: Mapping[str, str]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    stamp = 0
    batch = [Metric(k, v, stamp, s) for k, v, s in metrics]
    for start in range(0, max(len(batch), 1), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=batch[start:start + 1000],
                         params=[Param(k, v) for k, v in params.items()] if start == 0
                         else [],
                         tags=[RunTag(k, v) for k, v in tags.items()] if start == 0 else [])


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # created meanwhile by another job
        return str(client.get_experiment_by_name(name).experiment_id)


def export_run(tracking_uri: str, folder: str | Path, spec: Mapping[str, Any], *,
               run_name: str, experiment: str = DEFAULT_EXPERIMENT,
               tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
               extra_metrics: Iterable[tuple[str, float, int]] = (),
               artifacts: Iterable[Path] = (), layer: str | None = None) -> str:
    """One finished experiment folder as one MLflow run (with `layer`, only that layer's
    files: the label `{l}` of the file names); returns its id."""
    client = _client(tracking_uri)
    folder = Path(folder)
    all_tags = {"quanta.kind": "transfer", **(tags or {})}
    if parent_run_id is not None:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name,
                            tags=all_tags)
    run_id = str(run.info.run_id)
    try:
        metrics = [*metrics_of(folder, layer), *extra_metrics] if folder.is_dir() \
            else list(extra_metrics)
        _log(client, run_id, metrics, params_of(spec), {})
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()
                 and p.suffix in ARTIFACT_SUFFIXES
                 and (layer is None or p.suffix != ".jsonl" or p in _files(p.parent, layer))
                 ] if folder.is_dir() else []
        for path in [*files, *artifacts]:
            relative = path.parent.relative_to(folder) if path.is_relative_to(folder) \
                else Path()
            client.log_artifact(run_id, str(path),
                                None if str(relative) == "." else relative.as_posix())
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def nest_study_runs(tracking_uri: str, experiment: str, study_id: str,
                    parent_run_id: str) -> int:
    """Puts the runs of a study's jobs (tag `quanta.study`) under the study's run; returns
    how many. MLflow nests by a tag, so runs made before their parent can be nested."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    runs = client.search_runs([found.experiment_id],
                              filter_string=f"tags.`quanta.study` = '{study_id}'",
                              max_results=5000)
    for run in runs:
        client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)
    return len(runs)


def export_bounded(export: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """`export()` in a thread of its own, waited for at most `timeout_s`: a tracking
    server that is down or slow costs a job that long at most, and a warning."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = export()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="mlflow-export", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("%s: the MLflow server did not answer within %g s; not exported", what,
                    timeout_s)
        return None
    if "error" in result:
        log.warning("%s: not exported to MLflow (%s: %s)", what,
                    type(result["error"]).__name__, str(result["error"])[:300])
        return None
    return result.get("value")
