"""QUANTA on networks the user brings: graphs read without TensorFlow, targets rewired
from the source's graph, the command line end to end (issue: any Keras network)."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from quanta import any_network, cli
from quanta.errors import QuantaError
from quanta.layer import QuantaLayer
from quanta_spec.keras_graph import GraphError, read_keras_file
from tests.support.own_networks import digits_at, mobilenet, residual, sequential, trained


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nets")
    return {
        "residual": trained(residual(), folder / "residual.keras"),
        "sequential": trained(sequential(), folder / "sequential.keras", epochs=1),
        "mobilenet": trained(mobilenet(), folder / "mobilenet.keras", epochs=1, samples=256),
    }


@pytest.mark.parametrize("name", ["residual", "sequential", "mobilenet"])
def test_the_graph_read_from_the_file_is_the_one_keras_builds(nets, name):
    """Parameters per layer from the weights' headers, as Keras counts them; the same
    listing from the file (no TensorFlow) as from the loaded model."""
    graph = read_keras_file(nets[name])
    model = keras.saving.load_model(nets[name])
    by_name = {layer.name: layer for layer in graph.layers}
    for layer in model.layers:
        if layer.name in by_name:
            assert by_name[layer.name].params == layer.count_params(), layer.name
    assert graph.params == model.count_params()
    assert any_network.graph_of(model).layers == graph.layers
    assert graph.nb_outputs == 10
    known = [layer for layer in graph.layers if layer.transferable and layer.output_shape]
    for layer in known:
        assert layer.output_shape == tuple(model.get_layer(layer.name).output.shape)
    # A Sequential model saves no shape for layers without weights (its pooling); the
    # functional ones say every shape.
    assert len(known) == len(graph.transferable) - (name == "sequential")


def test_which_layers_are_transferable_and_why_not(nets):
    graph = read_keras_file(nets["residual"])
    assert graph.transferable == ("c1", "c2", "bn2", "add", "relu", "gap", "drop")
    reasons = {layer.name: layer.reason for layer in graph.layers if not layer.transferable}
    assert set(reasons) == {"rescaling", "shared", "head"}
    assert "called 2 times" in reasons["shared"]
    assert "head" in reasons["head"] and "agree" in reasons["rescaling"]
    mobile = read_keras_file(nets["mobilenet"])
    assert mobile.head == "logits"  # a 1x1 Conv2D, then Flatten and the softmax
    assert "predictions" not in mobile.transferable and "flatten" not in mobile.transferable
    with pytest.raises(GraphError, match="no layer 'nope'"):
        graph.check_layers(["nope"])
    assert graph.in_graph_order(["relu", "c1"]) == ("c1", "relu")


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_subclassed_and_headless_networks_are_one_clear_line(tmp_path, capsys):
    model = _Subclassed()
    model(np.zeros((1, 4, 4, 3), "float32"))
    model.save(tmp_path / "sub.keras")
    with pytest.raises(GraphError, match="subclassed model"):
        read_keras_file(tmp_path / "sub.keras")
    headless = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                                 keras.layers.GlobalAveragePooling2D()])
    headless.save(tmp_path / "headless.keras")
    for name, reason in (("sub", "subclassed"), ("headless", "not a classifier layer")):
        code = cli.main(["-s", "digits", "-sm", str(tmp_path / f"{name}.keras"), "-t",
                         "digits", "-l", "x", "-o", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and reason in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def _prefix(model, layer):
    return keras.Model(model.inputs, model.get_layer(layer).output)


def test_a_target_from_the_source_s_weights_reproduces_its_features(nets):
    """With the source's weights, Z_T = Z_S at every mixed layer, so whatever λ the mix
    is the source's own output: the split of c1's fused ReLU puts the mix before it, and
    the weights went where they belong."""
    source = any_network.load_network(nets["residual"])
    graph = any_network.graph_of(source)
    target = any_network.build_target(source, graph, 3, ["c1", "add"], init_from_source=True)
    assert any_network.mixing_points(source, ["c1", "add"]) == {"c1": "pre-activation",
                                                                "add": "output"}
    assert target.get_layer("c1").get_config()["activation"] == "linear"
    assert target.get_layer("quanta_c1").get_config()["activation"] == "relu"
    x, _ = digits_at((16, 16, 3), 16)
    x = x.astype("float32")
    ours = _prefix(target, "quanta_add").predict(x, verbose=0)
    theirs = _prefix(source, "add").predict(x, verbose=0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert target.output_shape == (None, 3)  # the head rebuilt for the target's classes


def test_with_lambda_s_one_the_target_sees_the_source_s_features(nets):
    """New weights (the paper's target from scratch), all weight on the source at `add`:
    the mix is the source's output there, computed by a cut that stops at `add`."""
    source = any_network.load_network(nets["residual"])
    graph = any_network.graph_of(source)
    target = any_network.build_target(source, graph, 10, ["add"])
    quanta = target.get_layer("quanta_add")
    quanta.quanta_weights.assign([[40.0, -40.0]])
    x, _ = digits_at((16, 16, 3), 16)
    x = x.astype("float32")
    np.testing.assert_allclose(_prefix(target, "quanta_add").predict(x, verbose=0),
                               _prefix(source, "add").predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    cut = target.get_layer("source_trunk")
    assert {"head", "gap", "relu", "drop"}.isdisjoint(layer.name for layer in cut.layers)
    assert not cut.trainable and all(not w.trainable for w in cut.weights)
    assert all(layer.trainable for layer in target.layers
               if layer.name not in ("source_trunk", "pixels", "images") and layer.weights)
    # The layer used in two branches stays one layer (one set of weights) in the target.
    assert sum(layer.name == "shared" for layer in target.layers) == 1
    shallow = any_network.source_cut(source, ["c1"])
    assert [layer.name for layer in shallow.layers if layer.weights] == ["c1"]


def test_quanta_layers_lists_names_first_without_tensorflow(nets):
    code = ("import sys; from quanta import cli; rc = cli.main(['layers', sys.argv[1]]); "
            "print('TF' if 'tensorflow' in sys.modules else 'noTF'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(nets["residual"])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "noTF"
    assert [line.split()[0] for line in lines[:-1]] == ["c1", "c2", "bn2", "add", "relu",
                                                        "gap", "drop"]
    assert "Conv2D" in lines[0] and "(None, 16, 16, 16)" in lines[0] and "448" in lines[0]


def _run(tmp_path, model, layer, *extra, out="out"):
    argv = ["-s", "digits", "-sm", str(model), "-t", "digits", "-l", layer,
            "--nb_of_target_samples", "128", "--nb_of_target_epochs", "2", "--seed", "3",
            "-o", str(tmp_path / out), *extra]
    assert cli.main(argv) == 0
    return tmp_path / out / "digits_to_digits"


def test_the_command_line_transfers_at_a_named_layer_reproducibly(nets, tmp_path, capsys):
    folder = _run(tmp_path, nets["residual"], "c1", "--witness")
    bars = capsys.readouterr().err
    assert "witness epoch 2/2" in bars and "epoch 2/2" in bars  # the witness's own bars
    names = sorted(p.name for p in folder.iterdir())
    assert "target_r_0_l_c1.keras" in names and "testing_metrics_of_witness_r_0_l_c1.jsonl" \
        in names
    network = json.loads((folder / "network.json").read_text())
    assert network["layers"] == {"c1": "pre-activation"} and network["input_shape"] == [16,
                                                                                          16, 3]
    quantas = json.loads((folder / "quantas_r_0_l_c1.jsonl").read_text())
    lam = quantas["c1"]["quantas"]["source"]
    assert len(lam) == 3 and lam[-1] != lam[0]  # start and two epochs; it moved
    again = _run(tmp_path, nets["residual"], "c1", "--witness", out="again")
    assert (again / "quantas_r_0_l_c1.jsonl").read_bytes() == \
        (folder / "quantas_r_0_l_c1.jsonl").read_bytes()
    import quanta  # noqa: F401 - registers the QUANTA layer, as users do
    target = keras.saving.load_model(folder / "target_r_0_l_c1.keras")
    assert any(isinstance(layer, QuantaLayer) for layer in target.layers)


def test_all_layers_at_once_and_a_sequential_network(nets, tmp_path):
    folder = _run(tmp_path, nets["sequential"], "-1")
    quantas = json.loads((folder / "quantas_r_0_l_all.jsonl").read_text())
    assert list(quantas) == ["conv_a", "pool", "conv_b", "flat"]  # graph order


@pytest.mark.slow  # MobileNetV3Small traced at three layers: about 2 minutes
def test_a_keras_applications_network_transfers_at_three_layers(nets, tmp_path):
    graph = read_keras_file(nets["mobilenet"])
    chosen = [graph.transferable[i] for i in (2, 20, 60)]
    from quanta.transfer import run_transfer
    from quanta_spec import TransferSpec

    spec = TransferSpec(source_task="digits", source_model=str(nets["mobilenet"]),
                        target_task="digits", layer_to_transfer=-1, nb_of_target_samples=64,
                        seed=1)
    with pytest.raises(QuantaError, match="at most 64 at once"):
        run_transfer(spec, tmp_path / "all")
    for layer in chosen:
        spec = spec.model_copy(update={"layer_to_transfer": layer})
        result = run_transfer(spec, tmp_path / "three")
        assert list(result.runs[0].quantas) == [layer]


def test_applications_by_name_never_download(monkeypatch, tmp_path):
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    with pytest.raises(QuantaError, match="not in the Keras cache"):
        any_network.load_network("keras.applications.MobileNetV3Small")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    with pytest.raises(QuantaError, match="has no network"):
        any_network.load_network("keras.applications.NoSuchNet")


def test_a_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(nets, tmp_path):
    """A worker that dies after epoch 2 of 3: the next attempt resumes the target (named
    QUANTA layers, nested source cut) from its checkpoint and writes the same λ_s."""
    from quanta.transfer import run_transfer
    from quanta_spec import TransferSpec

    spec = TransferSpec(source_task="digits", source_model=str(nets["residual"]),
                        target_task="digits", layer_to_transfer="c1",
                        nb_of_target_samples=128, nb_of_target_epochs=3, seed=2)
    run_transfer(spec, tmp_path / "whole")

    class Crash(Exception):
        pass

    def crash(event):
        if event.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        run_transfer(spec, tmp_path / "cut", checkpoint_dir=tmp_path / "ckpt", on_epoch=crash)
    assert any((tmp_path / "ckpt").rglob("*.keras"))
    run_transfer(spec, tmp_path / "cut", checkpoint_dir=tmp_path / "ckpt")
    name = "digits_to_digits/quantas_r_0_l_c1.jsonl"
    assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_quanta_layers_piped_into_head_exits_0():
    """`quanta layers MODEL | head` under `set -o pipefail` (as the README runs it): a
    reader gone early is no error. Made certain here: stdout is a pipe whose reader has
    already closed it."""
    code = ("import os; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
            "from quanta.cli import _print_piped; _print_piped('layer\\n' * 50000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
