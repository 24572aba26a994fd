"""Studies that stop when they know enough (`until`): the rule, its lock, and real runs.

The runs are real training of the tiny network on the offline `digits` task, by an
in-process `JobRunner` (no broker: the runs `until` adds stay queued for the sweeper,
and `drain` plays the workers that take them).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from quanta_spec.file_names import run_file_names
from tests.support.jobs import TINY_SOURCE, drain

EPOCHS, SAMPLES, SEED = 1, 64, 11
LAYERS = [0, 6]
#: The layer the real runs measure (one is enough: the rule decides per layer).
TRAINED = [3]


def until_spec(source_id: str, **extra: Any) -> dict[str, Any]:
    return {"source_task": "digits", "target_task": "digits", "source_weights": {"job": source_id},
            "layers": LAYERS, "nb_of_target_epochs": EPOCHS, "nb_of_target_samples": SAMPLES,
            "width_multiplier": 0.0625, "seed": SEED, **extra}


# --- the rule, without training --------------------------------------------------------
def test_verdict_waits_for_the_first_runs_then_replaces_each_ended_run() -> None:
    from quanta_jobs.adaptive_runs import LayerRuns, verdict
    from quanta_spec.stopping import UntilRule

    rule = UntilRule(ci_halfwidth=0.01, min_runs=3, max_runs=6)
    # Two of the first three ended: wait (an interval over two runs would decide too soon).
    runs = LayerRuns(0, started={0, 1, 2}, active=1, ended=2,
                     finals=[{"0": 0.5}, {"0": 0.7}])
    assert verdict(rule, runs) == (None, 0)
    # All three ended, spread wide: three more at once (min_runs in flight).
    runs = LayerRuns(0, started={0, 1, 2}, active=0, ended=3,
                     finals=[{"0": 0.5}, {"0": 0.7}, {"0": 0.9}])
    assert verdict(rule, runs) == (None, 3)
    # Narrow enough: stop.
    runs.finals = [{"0": 0.500}, {"0": 0.501}, {"0": 0.502}]
    assert verdict(rule, runs) == ("ci_reached", 0)
    # Every run started: no more, whatever the interval.
    runs = LayerRuns(0, started=set(range(6)), active=2, ended=4,
                     finals=[{"0": v} for v in (0.1, 0.9, 0.2, 0.8)])
    assert verdict(rule, runs) == ("max_runs", 0)
    # A failed run: the layer's prefix has a hole, no more runs.
    runs = LayerRuns(0, started={0, 1, 2}, active=0, ended=3, failed=1,
                     finals=[{"0": 0.5}, {"0": 0.9}])
    assert verdict(rule, runs) == ("failed_runs", 0)
    # The all-at-once entry: the widest of its layers' intervals decides.
    runs = LayerRuns(-1, started={0, 1, 2}, active=0, ended=3,
                     finals=[{"0": 0.5, "6": 0.1}, {"0": 0.5, "6": 0.5}, {"0": 0.5, "6": 0.9}])
    assert verdict(rule, runs) == (None, 3)


@pytest.mark.parametrize(("until", "field"), [
    ({"ci_halfwidth": 0.01, "min_runs": 1}, "min_runs"),
    ({"ci_halfwidth": 0.01, "min_runs": 5, "max_runs": 4}, "until"),
    ({"ci_halfwidth": 0}, "ci_halfwidth"),
    ({"ci_halfwidth": 0.01, "extra": 1}, "extra"),
])
def test_a_bad_until_is_422_naming_the_field(client: Any, source_job: Any,
                                             until: dict[str, Any], field: str) -> None:
    response = client.post("/v1/jobs", json={"kind": "study",
                                             "spec": until_spec(source_job.id, until=until)})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["loc"]


def test_until_is_bounded_by_the_study_ceiling_and_excludes_nb_of_runs(client: Any,
                                                                       source_job: Any) -> None:
    spec = until_spec(source_job.id, layers="all", until={"ci_halfwidth": 0.01,
                                                          "max_runs": 200})
    response = client.post("/v1/jobs", json={"kind": "study", "spec": spec})
    assert response.status_code == 422 and "1400 jobs" in response.text
    spec = until_spec(source_job.id, nb_of_runs=5, until={"ci_halfwidth": 0.01})
    response = client.post("/v1/jobs", json={"kind": "study", "spec": spec})
    assert response.status_code == 422 and "not both" in response.text
    # The paper's preset with until: until sets the runs.
    spec = until_spec(source_job.id, protocol="kes2021", until={"ci_halfwidth": 0.01,
                                                                "min_runs": 2})
    del spec["layers"]  # the preset's: all seven
    response = client.post("/v1/jobs", json={"kind": "study", "spec": spec})
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["progress"]["total"] == 2 * 7  # min_runs of each of the seven layers


def _finish_child(db: Any, child_id: str, value: float) -> None:
    """A child that ran and found λ_s = `value` (its result, as a worker records it)."""
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.models import Job

    child = db.get(Job, child_id)
    transition(db, child, JobStatus.RUNNING, worker="w@host")
    layer = str(child.spec["layer_to_transfer"])
    transition(db, child, JobStatus.SUCCEEDED, owner="w@host", result={
        "runs": [{"run": 0, "quantas": {layer: {"source": value, "target": 1 - value}}}]})
    db.commit()


def test_children_ending_at_once_never_add_the_same_run_twice(client: Any, source_job: Any,
                                                              db: Any, app: Any) -> None:
    """Eight threads decide at once for a study whose first runs all ended: the runs added
    are exactly the ones the rule asks for, each (layer, run) once."""
    from quanta_jobs import adaptive_runs
    from quanta_jobs.models import Job

    spec = until_spec(source_job.id, until={"ci_halfwidth": 1e-6, "min_runs": 2,
                                            "max_runs": 5})
    study = client.post("/v1/jobs", json={"kind": "study", "spec": spec}).json()
    first = db.scalars(select(Job).where(Job.parent_id == study["id"])).all()
    for i, child in enumerate(first):
        _finish_child(db, child.id, 0.5 + 0.1 * i)
    barrier = threading.Barrier(8)
    added: list[list[str]] = []
    errors: list[BaseException] = []

    def decide() -> None:
        try:
            barrier.wait()
            with app.state.sessionmaker() as session:
                added.append(adaptive_runs.extend_study(session, study["id"]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=decide) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    db.expire_all()
    rows = db.scalars(select(Job).where(Job.parent_id == study["id"])).all()
    keys = [(r.spec["layer_to_transfer"], r.study_run) for r in rows]
    assert len(keys) == len(set(keys))
    # Each layer: its 2 first runs ended, so 2 more (min_runs in flight), runs 2 and 3.
    assert sorted(keys) == sorted((k, r) for k in LAYERS for r in range(4))
    assert sum(len(ids) for ids in added) == 4
    assert {r.spec["seed"] for r in rows if r.study_run == 3} == {SEED + 3}


def test_a_cancelled_study_gets_no_more_runs(client: Any, source_job: Any, db: Any) -> None:
    from quanta_jobs import adaptive_runs

    spec = until_spec(source_job.id, until={"ci_halfwidth": 1e-6, "min_runs": 2})
    study = client.post("/v1/jobs", json={"kind": "study", "spec": spec}).json()
    client.post(f"/v1/jobs/{study['id']}/cancel")
    assert adaptive_runs.extend_study(db, study["id"]) == []


# --- real runs -----------------------------------------------------------------------


def quantas_files(settings: Any, db: Any, study_id: str) -> dict[tuple[int, int], str]:
    """(layer, run) -> the text of the child's quantas file."""
    from quanta_jobs.models import Job

    out = {}
    for child in db.scalars(select(Job).where(Job.parent_id == study_id)):
        assert child.status == "succeeded", child.error
        layer = int(child.spec["layer_to_transfer"])
        path = (Path(settings.artifacts_dir) / child.id / child.result["experiment_dir"]
                / run_file_names(0, str(layer))["quantas"])
        out[(layer, int(child.study_run))] = path.read_text()
    return out


@pytest.fixture
def trained(client: Any, settings: Any, db: Any) -> Any:
    """A really trained tiny source and the runner that trains the studies on it."""
    from worker.runner import JobRunner

    if not settings.database_url.startswith("sqlite"):
        pytest.skip("real training once is enough: it runs on SQLite")
    runner = JobRunner(settings)
    source = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}).json()
    assert runner.run(source["id"], "w@host").status == "succeeded"
    yield runner, source["id"]
    runner.engine.dispose()


@pytest.mark.slow
def test_a_study_with_until_is_a_prefix_of_the_fixed_study(client: Any, settings: Any,
                                                           db: Any, trained: Any) -> None:
    runner, source_id = trained
    fixed = client.post("/v1/jobs", json={"kind": "study", "spec": until_spec(
        source_id, layers=TRAINED, nb_of_runs=3)}).json()
    # Loose target: each layer stops after its first two runs, before max_runs.
    loose = client.post("/v1/jobs", json={"kind": "study", "spec": until_spec(
        source_id, layers=TRAINED, until={"ci_halfwidth": 0.5, "min_runs": 2,
                                          "max_runs": 3})}).json()
    # A target no run reaches: runs are added up to max_runs.
    tight = client.post("/v1/jobs", json={"kind": "study", "spec": until_spec(
        source_id, layers=TRAINED, until={"ci_halfwidth": 1e-12, "min_runs": 2,
                                          "max_runs": 3})}).json()
    assert loose["progress"]["total"] == tight["progress"]["total"] == 2
    assert drain(runner, db) == 3 + 2 + 3  # the fixed study, the loose one, the tight one

    bodies = {name: client.get(f"/v1/jobs/{s['id']}").json()
              for name, s in (("fixed", fixed), ("loose", loose), ("tight", tight))}
    assert {b["status"] for b in bodies.values()} == {"succeeded"}, bodies
    loose_summary = client.get(f"/v1/jobs/{loose['id']}/summary").json()
    tight_summary = client.get(f"/v1/jobs/{tight['id']}/summary").json()
    for layer in map(str, TRAINED):
        stop = loose_summary["stopping"][layer]
        assert stop["reason"] == "ci_reached" and stop["runs"] == 2, stop
        assert stop["ci_halfwidth"] <= 0.5
        assert loose_summary["entries"][layer]["runs"] == [0, 1]
        stop = tight_summary["stopping"][layer]
        assert stop["reason"] == "max_runs" and stop["runs"] == 3, stop
        assert tight_summary["entries"][layer]["runs"] == [0, 1, 2]
    assert "stopping" not in client.get(f"/v1/jobs/{fixed['id']}/summary").json()
    assert bodies["loose"]["result"]["stopping"][str(TRAINED[0])]["reason"] == "ci_reached"
    # Run r of every study is the same seeded run: the same quantas, to the last digit.
    reference = quantas_files(settings, db, fixed["id"])
    for study in (loose, tight):
        runs = quantas_files(settings, db, study["id"])
        assert runs == {key: reference[key] for key in runs}
    assert set(quantas_files(settings, db, tight["id"])) == set(reference)
