"""The per-job plot of a transfer job reads what the job wrote: λ_s per epoch of each
run, and with test_every_epoch the target's test accuracy per epoch beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quanta_spec import RemoteTransferSpec
from quanta_spec.file_names import TRANSFER_PLOT, run_file_names


def _write(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(line) + "\n")


@pytest.mark.parametrize("tested", [True, False])
def test_the_plot_draws_the_per_epoch_test_accuracy(tmp_path: Path, tested: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from quanta import plots
    from worker import job_plots

    spec = RemoteTransferSpec(source_task="digits", target_task="digits", layer_to_transfer=3,
                              source_weights={"job": "a" * 32}, nb_of_runs=2,
                              nb_of_target_epochs=2, test_every_epoch=tested, seed=1)
    experiment = tmp_path / "out" / "digits_to_digits"
    for run in range(2):
        names = run_file_names(run, "3")
        _write(experiment / names["quantas"],
               {"3": {"keras_layer_index": 22, "quantas": {"source": [0.9, 0.8 - run / 10,
                                                                       0.7]}}})
        if tested:
            _write(experiment / names["target_testing_per_epoch"],
                   {str(e): {"categorical_accuracy": 0.3 + e / 10 + run / 100, "loss": 1.0}
                    for e in range(2)})
    seen: list[Any] = []
    real = plots.quantas_per_epoch

    def spy(runs: Any, path: Any, title: str, tests: Any = ()) -> Path:
        seen.append(list(tests))
        return real(runs, path, title, tests=tests)

    monkeypatch.setattr(plots, "quantas_per_epoch", spy)
    job_plots.transfer_plot(spec, experiment, tmp_path / "out", 2)
    assert (tmp_path / "out" / TRANSFER_PLOT).stat().st_size > 0
    (tests,) = seen
    if tested:
        assert [t["1"]["categorical_accuracy"] for t in tests] == pytest.approx([0.4, 0.41])
    else:
        assert tests == []
