"""Compiled models kept for the life of a process, so that TensorFlow traces a network
once per shape, not once per run.

Tracing a new model's train and test functions costs about as much as the whole
training of a short run (docs/performance.md has the figures). Every run of a layer
builds the same network, and a worker runs many jobs. So a run still builds its own
model (cheap: its initial weights and random states come from the run's seed), but the
model it trains is
the one kept from an earlier run of the same shape: the new model's initial state is
copied into it and its optimizer is put back to its state before any step. The run then
starts exactly where a new model would have, and its results are the same (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import keras
import numpy as np

from quanta import training
from quanta_spec.lru import LRU

#: How many compiled models a process keeps. A study runs its layers in turn, run after
#: run: its 8 target shapes (layers 0-6 and all at once) and its witness must all fit,
#: or every run would miss. A full-width kes2021 target holds 20 million parameters,
#: three times over with Adam's two moments.
DEFAULT_SIZE = 10


@dataclass
class Compiled:
    """A compiled model (`model`: evaluated and exported) and the model that trains it
    (`trainer`: the same model, or one that shares every layer with it)."""

    model: keras.Model
    trainer: keras.Model
    #: The optimizer's variables before any step, to reset it between runs.
    optimizer_start: list[np.ndarray] = field(default_factory=list, repr=False)


class TracedModels:
    """An LRU of compiled models by shape key (everything that changes the graph)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.items: LRU[Hashable, Compiled] = LRU(size)
        self.reused = 0

    @property
    def size(self) -> int:
        return self.items.size

    def get(self, key: Hashable, build: Callable[[], Compiled]) -> Compiled:
        """A model in the initial state of `build()`, reusing a kept one if `key` has one.

        `build` must be called where the run's seed is set: it is always called, since
        the new model's weights and random states are what the run starts from. Layers
        it shares with the kept model (the frozen source) are left as they are.
        """
        fresh = build()
        kept = self.items.peek(key)
        if kept is None:
            self._keep(key, fresh)
            return fresh
        _copy_initial_state(fresh, kept)
        self.reused += 1
        return kept

    def resize(self, size: int) -> None:
        """Keep at most `size` models from now on (0: keep none, so nothing is reused)."""
        self.items.resize(size)

    def clear(self) -> None:
        self.items.clear()
        self.reused = 0

    def _keep(self, key: Hashable, compiled: Compiled) -> None:
        optimizer = compiled.trainer.optimizer
        if not optimizer.built:
            optimizer.build(compiled.trainer.trainable_variables)
        compiled.optimizer_start = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
        self.items.put(key, compiled)


def _copy_initial_state(fresh: Compiled, kept: Compiled) -> None:
    for layer in kept.model.layers:
        new = fresh.model.get_layer(layer.name)
        if all(a is b for a, b in zip(new.weights, layer.weights, strict=True)):
            continue  # no weights, or the frozen source's, which both models share
        layer.set_weights(new.get_weights())
    training.set_rng_states(kept.model, training.rng_states(fresh.model))
    for variable, start in zip(kept.trainer.optimizer.variables, kept.optimizer_start,
                               strict=True):
        variable.assign(start)
