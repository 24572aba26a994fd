"""The file names of the seed's output layout, and the service's extras beside them.

Pure string and path functions, free of TensorFlow: the library writes these files
(`quanta.export`), the service finds them (spec references, study statistics, upload
names) and the client renames them (a study's downloads), so all of them agree on
one definition here.
"""

from __future__ import annotations

import re
from pathlib import Path

from quanta_spec.specs import ALL_LAYERS_LABEL, task_label

#: Files of a source training, in `{task}_training/`.
SOURCE_FILE_NAMES = {
    "model": "source.keras",
    "weights": "source.weights.h5",
    "training": "training_metrics_of_source.jsonl",
    "testing": "testing_metrics_of_source.jsonl",
}

#: The service's extras in a job's folder (not part of the seed's layout).
PLOTS_DIR = "plots"
#: λ_s per epoch of a transfer job's runs.
TRANSFER_PLOT = f"{PLOTS_DIR}/quantas.png"
#: The plots of a study, by name (`plots/{name}.png`).
STUDY_PLOTS = ("transferability", "accuracy")
SUMMARY_JSON = "summary.json"
#: With a source_model: the network, its input, preprocessing and mixing points used.
NETWORK_FILE = "network.json"
SUMMARY_CSV = "summary.csv"

#: Run 0's mark in a file name (`..._r_0_l_3.jsonl`) or a folder's (`tensorboard/target_r_0_l_3/`).
_RUN_0 = re.compile(rf"_r_0_l_(\d+|{ALL_LAYERS_LABEL})(?=[./])")


def experiment_dir_name(source_task: str, target_task: str) -> str:
    """`{source_task}_to_{target_task}`, with a user file named by its stem."""
    return f"{task_label(source_task)}_to_{task_label(target_task)}"


def experiment_dir(output_dir: str | Path, source_task: str, target_task: str) -> Path:
    """`{output_dir}/{source_task}_to_{target_task}`."""
    return Path(output_dir) / experiment_dir_name(source_task, target_task)


def source_training_dir_name(source_task: str) -> str:
    """`{source_task}_training`."""
    return f"{task_label(source_task)}_training"


def source_training_dir(output_dir: str | Path, source_task: str) -> Path:
    """`{output_dir}/{source_task}_training`."""
    return Path(output_dir) / source_training_dir_name(source_task)


def run_suffix(run: int, layer: str) -> str:
    """`r_{run}_l_{layer}`, the part of a file name that says which run and layer."""
    return f"r_{run}_l_{layer}"


def run_file_names(run: int, layer: str) -> dict[str, str]:
    """The seed's file names for run `run` and layer label `layer` (a number or `all`)."""
    suffix = run_suffix(run, layer)
    return {
        "source_model": f"source_{suffix}.keras",
        "target_model": f"target_{suffix}.keras",
        "quantas": f"quantas_{suffix}.jsonl",
        "source_testing": f"testing_metrics_of_source_{suffix}.jsonl",
        "target_testing": f"testing_metrics_of_target_{suffix}.jsonl",
        "target_training": f"training_metrics_of_target_{suffix}.jsonl",
        # Only with the witness option; not part of the seed's layout.
        "witness_testing": f"testing_metrics_of_witness_{suffix}.jsonl",
        "witness_training": f"training_metrics_of_witness_{suffix}.jsonl",
        # Only with test_every_epoch (the paper's protocol): one line per run, epoch to
        # test metrics.
        "target_testing_per_epoch": f"testing_metrics_of_target_per_epoch_{suffix}.jsonl",
    }


def as_run(path: str, run: int) -> str:
    """A file name of run 0 renamed to run `run` (a study's child ran one run, its run 0,
    which is run `run` of the study)."""
    return _RUN_0.sub(lambda m: f"_{run_suffix(run, m.group(1))}", path)


def child_plot(run: int, layer: str) -> str:
    """Where a study's download puts the `plots/quantas.png` of its child (run, layer)."""
    return f"{PLOTS_DIR}/quantas_{run_suffix(run, layer)}.png"


def study_plot(name: str) -> str:
    """`plots/{name}.png`, one of `STUDY_PLOTS`."""
    return f"{PLOTS_DIR}/{name}.png"
