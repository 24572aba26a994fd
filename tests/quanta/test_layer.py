"""The QUANTA layer: its math, its float32 quantas, its gradient multiplier, its saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from quanta.layer import QuantaLayer


def _softmax(w):
    e = np.exp(w - np.max(w))
    return e / e.sum()


def _elu(x):
    return np.where(x > 0, x, np.expm1(x))


@pytest.mark.parametrize("initial", [(1.1, -1.1), (0.3, 0.7), (-2.0, 5.0)])
def test_output_is_activation_of_the_quanta_mix(initial):
    rng = np.random.default_rng(0)
    z_s = rng.normal(size=(4, 5, 5, 3)).astype("float32")
    z_t = rng.normal(size=(4, 5, 5, 3)).astype("float32")
    layer = QuantaLayer(transferred_layer=2, initial_weights=initial)
    out = keras.ops.convert_to_numpy(layer([z_s, z_t]))
    lam_s, lam_t = _softmax(np.array(initial))
    np.testing.assert_allclose(out, _elu(lam_s * z_s + lam_t * z_t), rtol=1e-5, atol=1e-6)
    assert layer.quantas() == pytest.approx((lam_s, lam_t))
    assert sum(layer.quantas()) == pytest.approx(1.0)


def test_default_starts_at_about_ninety_percent_source():
    layer = QuantaLayer()
    layer.build([(None, 3), (None, 3)])
    assert layer.weights_pair() == pytest.approx((1.1, -1.1))
    assert layer.quantas()[0] == pytest.approx(0.9002495, abs=1e-6)


def test_gradient_multiplier_scales_only_the_quanta_gradient():
    z_s = tf.constant(np.random.default_rng(1).normal(size=(8, 4)), dtype="float32")
    z_t = tf.constant(np.random.default_rng(2).normal(size=(8, 4)), dtype="float32")
    grads, outputs = [], []
    for multiplier in (1.0, 3.0):
        layer = QuantaLayer(gradient_multiplier=multiplier)
        with tf.GradientTape() as tape:
            out = layer([z_s, z_t])
            loss = tf.reduce_sum(out**2)
        grads.append(tape.gradient(loss, layer.quanta_weights).numpy())
        outputs.append(out.numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)
    np.testing.assert_allclose(grads[1], 3.0 * grads[0], rtol=1e-4)
    assert np.abs(grads[0]).sum() > 0


def test_quantas_stay_float32_under_mixed_precision():
    layer = QuantaLayer(dtype="mixed_float16")
    z = np.ones((2, 3), dtype="float16")
    out = layer([z, z])
    assert layer.quanta_weights.dtype == "float32"
    assert out.dtype == "float16"
    # 1.1 is not representable in float16: the weight must not have been rounded.
    assert layer.weights_pair()[0] == pytest.approx(np.float32(1.1), abs=0)


def test_round_trip_through_a_keras_file_without_custom_objects(tmp_path):
    a = keras.Input((4,), name="a")
    b = keras.Input((4,), name="b")
    layer = QuantaLayer(
        transferred_layer=6, initial_weights=(0.2, 0.5), gradient_multiplier=2.5, name="q"
    )
    model = keras.Model([a, b], layer([a, b]))
    layer.quanta_weights.assign([[0.7, -0.4]])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # no custom_objects
    q = loaded.get_layer("q")
    assert isinstance(q, QuantaLayer)
    assert q.transferred_layer == 6
    assert q.gradient_multiplier == 2.5
    assert q.initial_weights == (0.2, 0.5)
    assert q.weights_pair() == pytest.approx((0.7, -0.4))
    x = [np.ones((1, 4), "float32"), -np.ones((1, 4), "float32")]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_rejects_inputs_of_different_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        QuantaLayer()([np.ones((2, 3), "float32"), np.ones((2, 4), "float32")])
