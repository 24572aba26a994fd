"""Random streams: no two purposes share draws, whatever the seeds (quanta_spec.streams).

The defect these tests hold off: a transfer seeded with the seed its source was trained
with drew the source's initial weights for its target, so the target started as a copy
of the source's initialisation and measured nothing.
"""

import keras
import numpy as np
import pytest

from quanta.source_training import train_source
from quanta.transfer import run_transfer
from quanta_spec import RemoteStudySpec, SourceSpec, TransferSpec, run_seed
from quanta_spec.streams import Stream, stream_seed, stream_seeds

WIDTH = 0.0625
SEED = 11  # the source's training seed, which the transfers below collide with
KERNELS = [f"conv_{k}" for k in range(6)] + ["dense_6"]


class _Starts(keras.callbacks.Callback):
    """Every trained model's transferable kernels before its first step, by model name."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[tuple[str, np.ndarray]] = []

    def on_train_begin(self, logs=None):
        found = [self.model.get_layer(name).kernel for name in KERNELS]
        self.kernels.append((self.model.name, _flat(found)))


def _flat(kernels) -> np.ndarray:
    return np.concatenate([keras.ops.convert_to_numpy(k).ravel() for k in kernels])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def collisions(tmp_path_factory):
    """A source trained with SEED; transfers whose runs are keyed SEED, SEED + 1, SEED - 1."""
    out = tmp_path_factory.mktemp("streams")
    starts = _Starts()
    trained = train_source(SourceSpec(source_task="digits", nb_of_epochs=2, nb_of_samples=256,
                                      seed=SEED, width_multiplier=WIDTH), out,
                           callbacks=[starts])
    source_model = keras.saving.load_model(trained.training_dir / "source.keras")
    source_start = starts.kernels[0][1]
    source_trained = _flat([source_model.get_layer(n).kernel for n in KERNELS])
    transfers = {}
    for seed in (SEED, SEED - 1):  # run 0 and run 1 of each, witness on
        starts = _Starts()
        spec = TransferSpec(source_task="digits", target_task="digits", layer_to_transfer=3,
                            source_weights=str(trained.training_dir / "source.weights.h5"),
                            nb_of_runs=2, nb_of_target_epochs=1, nb_of_target_samples=64,
                            seed=seed, width_multiplier=WIDTH, witness=True)
        run_transfer(spec, out / f"seed_{seed}", callbacks=[starts])
        transfers[seed] = starts.kernels
    return source_start, source_trained, transfers


def test_a_target_never_starts_from_its_sources_draws(collisions):
    source_start, source_trained, transfers = collisions
    # Before the streams, a target keyed SEED started as a copy of the source (corr 1.0).
    assert abs(_corr(source_start, source_trained)) > 0.5  # a short training keeps its start
    for seed, kernels in transfers.items():
        for name, start in kernels:
            assert abs(_corr(start, source_start)) < 0.1, (seed, name)
            assert abs(_corr(start, source_trained)) < 0.1, (seed, name)


def test_runs_with_the_same_key_start_the_same_and_others_do_not(collisions):
    _, _, transfers = collisions
    # Each run trains its target, then its witness: [target r0, witness r0, target r1, ...].
    names = [name for name, _ in transfers[SEED]]
    assert names == ["target", "witness", "target", "witness"]
    run0_of_seed, run1_of_seed_below = transfers[SEED][0][1], transfers[SEED - 1][2][1]
    np.testing.assert_array_equal(run0_of_seed, run1_of_seed_below)  # both keyed SEED
    # Run 0 of SEED - 1 is keyed SEED - 1: another start.
    assert abs(_corr(run0_of_seed, transfers[SEED - 1][0][1])) < 0.1
    # A study's run r is the transfer keyed seed + r: its child job is this same run.
    study = RemoteStudySpec(source_task="digits", target_task="digits",
                            source_weights={"job": "src"}, layers=[3], nb_of_runs=2,
                            seed=SEED - 1, width_multiplier=WIDTH)
    assert study.child_seed(1) == run_seed(SEED - 1, 1) == SEED


def test_the_witness_never_starts_as_the_target(collisions):
    _, _, transfers = collisions
    for kernels in transfers.values():
        for run in (0, 1):
            (target_name, target), (witness_name, witness) = kernels[2 * run:2 * run + 2]
            assert (target_name, witness_name) == ("target", "witness")
            # The target's transferred layer 3 is compared with the witness's too.
            assert abs(_corr(target, witness)) < 0.1


def test_streams_are_apart_for_every_purpose_and_stable():
    seeds = {stream: stream_seed(SEED, stream) for stream in Stream}
    assert len(set(seeds.values())) == len(Stream)
    # A purpose's stream never equals another purpose's at a neighbouring seed.
    neighbours = {stream_seed(s, stream) for s in range(SEED - 3, SEED + 4) for stream in Stream}
    assert len(neighbours) == 7 * len(Stream)
    # The values are part of every seeded result: pinned.
    assert stream_seed(0, Stream.TARGET_INIT) == 1874364848
    assert stream_seeds(42, Stream.DATA_ORDER, 2) == [3918529139, 1876950974]
    with pytest.raises(ValueError, match="seed >= 0"):
        stream_seed(-1, Stream.TARGET_INIT)
