"""The random streams of a seeded experiment: one per purpose, never shared.

A seeded experiment draws random numbers for several purposes: a source's initial
weights, a target's, a witness's, the Dropout and augmentation masks of each network,
and the order of the batches. If two purposes drew from the same sequence, a target
whose seed equals the seed its source was trained with would start as a copy of the
source's initial weights, and would measure a network that was handed the source's
features, not transferability. So each purpose has its own stream, derived from
(seed, purpose) with NumPy's `SeedSequence`: distinct purposes give independent streams
whatever the seeds.

A multi-run experiment keys run r by `run_seed(seed, r)` (`seed + r`), so run r of
`quanta -r N --seed S` is the same computation as a single run with seed S + r, which is
what a study's child job and a resumed run do.

TensorFlow-free: the API process reads `Stream` to document it, the library seeds with it.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """A purpose that draws random numbers. The values are part of every seeded result:
    never renumber them."""

    #: The initial weights of a source being trained (`quanta-train-source`).
    SOURCE_INIT = 1
    #: The Dropout and augmentation masks of a source being trained.
    SOURCE_TRAINING_DROPOUT = 2
    #: The order of the batches while a source is trained (with `shuffle`).
    SOURCE_TRAINING_ORDER = 3
    #: The initial weights of a run's target.
    TARGET_INIT = 4
    #: The Dropout and augmentation masks of a run's target.
    TARGET_DROPOUT = 5
    #: The initial weights of a run's witness (the target's network without transfer).
    WITNESS_INIT = 6
    #: The Dropout and augmentation masks of a run's witness.
    WITNESS_DROPOUT = 7
    #: The Dropout masks of the frozen source while a run's target trains.
    SOURCE_DROPOUT = 8
    #: The order of a run's batches (with `shuffle`); target and witness see the same.
    DATA_ORDER = 9


def stream_seeds(seed: int, stream: Stream, count: int = 1) -> list[int]:
    """`count` 32-bit seeds from stream `stream` of `seed` (seed >= 0).

    Each is a fine seed for Python's `random`, NumPy, TensorFlow or a Keras
    `SeedGenerator`; the i-th depends only on (seed, stream, i).
    """
    if seed < 0:
        raise ValueError(f"a stream needs a seed >= 0 (got {seed})")
    sequence = np.random.SeedSequence([int(seed), int(stream)])
    return [int(v) for v in sequence.generate_state(count, dtype=np.uint32)]


def stream_seed(seed: int, stream: Stream) -> int:
    """The first seed of `stream_seeds(seed, stream)`."""
    return stream_seeds(seed, stream)[0]
