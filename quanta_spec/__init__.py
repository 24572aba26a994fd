"""Experiment specifications shared by the command line, the API and the workers.

This package is deliberately free of TensorFlow: the API process imports it to
validate requests, and must stay small and fast to start.
"""

from quanta_spec.specs import (
    ALL_LAYERS_LABEL,
    BUILTIN_TASKS,
    MAX_STUDY_JOBS,
    NB_TRANSFERABLE_LAYERS,
    FileRef,
    JobRef,
    RemoteSourceSpec,
    RemoteStudySpec,
    RemoteTransferSpec,
    SourceSpec,
    TaskRef,
    TransferSpec,
    UploadRef,
    layer_label,
    run_seed,
    task_label,
)

__all__ = [
    "ALL_LAYERS_LABEL",
    "BUILTIN_TASKS",
    "MAX_STUDY_JOBS",
    "NB_TRANSFERABLE_LAYERS",
    "FileRef",
    "JobRef",
    "RemoteSourceSpec",
    "RemoteStudySpec",
    "RemoteTransferSpec",
    "SourceSpec",
    "TaskRef",
    "TransferSpec",
    "UploadRef",
    "layer_label",
    "run_seed",
    "task_label",
]
