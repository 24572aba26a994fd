"""Whole experiments: training a source, and QUANTA transfers over several runs.

These are the functions the command line and the service's workers call. They take
a spec from `quanta_spec`, write the seed's files under `output_dir`, and report
progress through `on_epoch` and stop early when `should_cancel` says so.

The code lives by concept in `quanta.results` (what they report), `quanta.sources`
(loading and caching the frozen source), `quanta.transfer` (the transfer loop) and
`quanta.source_training`; this module keeps the names existing callers import.
"""

from __future__ import annotations

from quanta.errors import Cancelled
from quanta.results import (
    EpochEvent,
    ProgressHook,
    RunResult,
    SourceResult,
    Timings,
    TransferResult,
)
from quanta.source_training import train_source
from quanta.sources import (
    SOURCE_CACHE_BYTES,
    load_source,
    precision,
    source_test_metrics,
    summary,
)
from quanta.transfer import TRACED_MODELS, run_transfer

__all__ = [
    "SOURCE_CACHE_BYTES",
    "TRACED_MODELS",
    "Cancelled",
    "EpochEvent",
    "ProgressHook",
    "RunResult",
    "SourceResult",
    "Timings",
    "TransferResult",
    "load_source",
    "precision",
    "run_transfer",
    "source_test_metrics",
    "summary",
    "train_source",
]
