"""What the client prints about a job: its results in the local command line's words,
and a short status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quanta_client.api import Client
from quanta_client.tables import correlations_table, scores_table, stopping_table
from quanta_spec.file_names import SUMMARY_JSON


def _acc(metrics: dict[str, Any] | None) -> str:
    value = (metrics or {}).get("categorical_accuracy")
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def _mean_ci(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    fmt = "+.4f" if signed else ".4f"
    if not stat.get("ci95"):
        # One run says nothing of the spread: the service gives no interval (null).
        return f"{stat['mean']:{fmt}} [n/a]"
    low, high = stat["ci95"]
    return f"{stat['mean']:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def report(client: Client, job: dict[str, Any], out: Callable[[str], None]) -> None:
    """What the job found, in the words of the local command line."""
    result = job.get("result") or {}
    if job["status"] != "succeeded":
        reason = job.get("error") or result.get("message") or ""
        out(f"job {job['id']} {job['status']}{': ' + reason if reason else ''}")
        for gap in result.get("missing", []):
            out(f"  layer {gap['layer']} run {gap['run']}: job {gap['job']} {gap['status']}: "
                f"{gap['error']}")
        return
    if result.get("model_summaries"):  # show_only_build of a transfer: its models
        for name, path in result["model_summaries"].items():
            out(f"== {name} ==\n{client.text(job['id'], path)}")
    elif job["kind"] == "source":
        out(f"source model trained: test accuracy {_acc(result.get('test_metrics'))}")
        if result.get("model_summary") and job["spec"].get("show_only_build"):
            out(client.text(job["id"], result["model_summary"]))
    elif job["kind"] == "transfer":
        for run in result.get("runs", []):
            lam = ", ".join(f"{k}: {v['source']:.4f}" for k, v in run["quantas"].items()
                            if v.get("source") is not None)
            out(f"run {run['run']}: source accuracy {_acc(run['source_metrics'])}, target "
                f"accuracy {_acc(run['target_metrics'])}, final λ_s by layer {{{lam}}}")
            if run.get("witness_metrics"):
                gain = run.get("transfer_gain")
                gain_text = f"{gain:+.4f}" if isinstance(gain, int | float) else "n/a"
                out(f"       witness accuracy {_acc(run['witness_metrics'])}, transfer gain "
                    f"{gain_text}")
    elif job["kind"] == "study":
        summary = client.summary(job["id"])
        out(f"{'layer':>6}  {'runs':>4}  {'final λ_s, mean [95% CI]':<28}  "
            f"{'target accuracy':<28}  transfer gain")
        for entry, data in summary["entries"].items():
            lam = data["lambda_s"].get(entry) if entry != "all" else None
            lam_text = _mean_ci(lam) if entry != "all" else f"see {SUMMARY_JSON}"
            out(f"{entry:>6}  {len(data['runs']):>4}  {lam_text:<28}  "
                f"{_mean_ci(data['target_accuracy']):<28}  "
                f"{_mean_ci(data.get('transfer_gain'), signed=True)}")
        for gap in summary.get("missing", []):
            out(f"missing: layer {gap['entry']} run {gap['run']}: {gap['reason']}")
        if summary.get("stopping"):
            stopping_table(summary["stopping"], out)
        baselines = summary.get("baselines")
        if baselines and baselines.get("layers"):
            out("baseline scores of the source (no training):")
            scores_table(baselines, out)
            correlations_table(baselines.get("correlations") or {}, out)
        elif baselines and baselines.get("error"):
            out(baselines["error"])
    elif job["kind"] == "scores":
        out(f"baseline scores on {result.get('nb_of_samples')} target training samples "
            f"({result.get('file')}):")
        scores_table(result, out)


def describe_job(job: dict[str, Any]) -> str:
    """A few lines about a job: status, progress, error."""
    lines = [f"{job['id']}  {job['kind']}  {job['status']}"]
    progress = job.get("progress") or {}
    if job["kind"] == "study" and progress:
        layers = ", ".join(f"{k}: {v['done']}/{v['total']}"
                           for k, v in progress.get("by_layer", {}).items())
        lines.append(f"  jobs done {progress['done']}/{progress['total']} "
                     f"({progress['succeeded']} succeeded, {progress['failed']} failed, "
                     f"{progress['cancelled']} cancelled); by layer {layers}")
    elif progress:
        lines.append(f"  run {progress['run']} (runs 0-{progress['nb_of_runs'] - 1}), epoch "
                     f"{progress['epoch']}/{progress['nb_of_epochs']} "
                     f"({100 * progress['fraction']:.0f}%)")
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    return "\n".join(lines)
