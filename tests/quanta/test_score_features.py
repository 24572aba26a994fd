"""Baseline scores of a real (tiny) source on the offline digits task."""

import math

import keras
import numpy as np
import pytest

from quanta import scores
from quanta.datasets import load_dataset
from quanta.errors import QuantaError
from quanta.models import build_model, freeze
from quanta.score_features import baseline_scores, source_outputs
from quanta.source_training import train_source
from quanta.sources import load_source
from quanta_spec import SourceSpec

WIDTH = 0.0625


def widths(model):
    """Filters of conv_0..conv_5 and units of dense_6: what pooled features must have."""
    return [model.get_layer(f"conv_{k}").filters for k in range(6)] + [
        model.get_layer("dense_6").units]


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    spec = SourceSpec(source_task="digits", nb_of_epochs=15, nb_of_samples=1024, seed=0,
                      width_multiplier=WIDTH)
    weights = train_source(spec, tmp_path_factory.mktemp("source")).training_dir
    return load_source(weights / "source.weights.h5", data, WIDTH)


@pytest.fixture(scope="module")
def untrained(data):
    keras.utils.set_random_seed(0)
    return freeze(build_model(data.input_shape, data.nb_classes, width_multiplier=WIDTH,
                              name="source"))


def test_one_pass_gives_pooled_post_activation_features(trained, data):
    x = data.x_test[:100]
    outputs = source_outputs(trained, x, batch_size=32)
    assert [outputs.features[k].shape for k in range(7)] == [(100, d) for d in widths(trained)]
    assert outputs.probabilities.shape == (100, 10)
    np.testing.assert_allclose(outputs.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Layer 3 is the ELU output of conv_3, averaged over its 4x4 map.
    act_3 = keras.Model(trained.inputs, trained.get_layer("act_3").output).predict(x, verbose=0)
    assert act_3.shape[1:3] == (4, 4)
    np.testing.assert_allclose(outputs.features[3], act_3.mean(axis=(1, 2)), rtol=1e-5,
                               atol=1e-6)
    assert outputs.features[3].min() >= -1.0  # ELU, not the pre-activation
    # Inference mode: Dropout (before layers 2-6) is off, so a second pass in the same
    # batches is identical, and one in other batches agrees to float rounding (oneDNN's
    # sums vary by ~1e-8 with the batch size; an active Dropout would zero whole units).
    same = source_outputs(trained, x, layers=[2, 6], batch_size=32)
    other = source_outputs(trained, x, layers=[2, 6], batch_size=64)
    for k in (2, 6):
        np.testing.assert_array_equal(same.features[k], outputs.features[k])
        np.testing.assert_allclose(other.features[k], outputs.features[k], rtol=1e-5, atol=1e-6)


def test_baseline_scores_per_layer_and_for_the_source(trained, untrained, data):
    x, y = data.x_test[:200], data.y_test[:200]
    result = baseline_scores(trained, x, y)
    assert result["nb_of_samples"] == 200
    assert list(result["layers"]) == [str(k) for k in range(7)]
    for layer, dims in zip(result["layers"].values(), widths(trained), strict=True):
        assert layer["dims"] == dims
        assert set(layer) == {"dims", *scores.FEATURE_SCORES}
        assert all(math.isfinite(layer[name]) for name in scores.FEATURE_SCORES), layer
    assert set(result["source"]) == set(scores.CLASSIFIER_SCORES)
    assert all(math.isfinite(v) for v in result["source"].values())
    # On the source's own task its predictions carry the labels and its last hidden layer
    # separates the classes; a random network's do neither as well.
    random = baseline_scores(untrained, x, y, layers=[6])
    assert list(random["layers"]) == ["6"]
    assert result["source"]["leep"] > random["source"]["leep"]
    assert result["source"]["nce"] > random["source"]["nce"]
    for name in scores.FEATURE_SCORES:
        assert result["layers"]["6"][name] > random["layers"]["6"][name], name
    # Options reach the score they name.
    shrunk = baseline_scores(trained, x, y, layers=[6], options={"h_score": {"shrinkage": 0.5}})
    assert shrunk["layers"]["6"]["h_score"] != result["layers"]["6"]["h_score"]
    assert shrunk["layers"]["6"]["logme"] == pytest.approx(result["layers"]["6"]["logme"])


def test_bad_requests_say_why(trained, data):
    with pytest.raises(QuantaError, match="layers are numbered 0-6"):
        source_outputs(trained, data.x_test[:4], layers=[7])
    with pytest.raises(QuantaError, match="3 labels for 4"):
        baseline_scores(trained, data.x_test[:4], data.y_test[:3])
