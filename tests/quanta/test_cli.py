"""The seed's command line end to end: source training, transfers, files, resuming, errors."""

import json
import subprocess
import sys

import keras
import pytest

from quanta import cli, train_source
from quanta.layer import quanta_layers

COMMON = ["--width_multiplier", "0.0625", "--seed", "42"]
EPOCHS = 2
METRICS = {
    "categorical_accuracy", "precision", "recall", "false_positives", "false_negatives",
    "true_positives", "true_negatives", "top_k_categorical_accuracy",
}


@pytest.fixture(scope="module")
def expe(tmp_path_factory):
    out = tmp_path_factory.mktemp("expe")
    rc = train_source.main(
        ["-o", str(out), "-s", "digits", "--nb_of_epochs", "1", "--nb_of_samples", "128",
         "--augment_data", *COMMON]
    )
    assert rc == 0
    return out


def _transfer(out, layer, *extra):
    weights = out / "digits_training" / "source.weights.h5"
    return cli.main(
        ["-o", str(out), "-s", "digits", "-sw", str(weights), "-t", "digits", "-l", str(layer),
         "-r", "2", "--nb_of_target_epochs", str(EPOCHS), "--nb_of_target_samples", "64",
         *COMMON, *extra]
    )


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_source_training_writes_its_folder(expe):
    folder = expe / "digits_training"
    assert sorted(p.name for p in folder.iterdir()) == [
        "source.keras", "source.weights.h5",
        "testing_metrics_of_source.jsonl", "training_metrics_of_source.jsonl",
    ]
    (training,) = _lines(folder / "training_metrics_of_source.jsonl")
    assert list(training) == ["0"] and METRICS | {"loss"} == set(training["0"])
    (testing,) = _lines(folder / "testing_metrics_of_source.jsonl")
    assert set(testing) >= METRICS


@pytest.mark.parametrize(("layer", "label", "keys"), [(0, "0", ["0"]),
                                                       (-1, "all", [str(k) for k in range(7)])])
def test_transfer_writes_the_seed_layout(expe, layer, label, keys):
    assert _transfer(expe, layer) == 0
    folder = expe / "digits_to_digits"
    for run in range(2):
        suffix = f"r_{run}_l_{label}"
        for name in (f"source_{suffix}.keras", f"target_{suffix}.keras"):
            assert (folder / name).stat().st_size > 0
        (training,) = _lines(folder / f"training_metrics_of_target_{suffix}.jsonl")
        assert list(training) == [str(e) for e in range(EPOCHS)]
        assert all(set(m) == METRICS | {"loss"} for m in training.values())
        for who in ("source", "target"):
            (testing,) = _lines(folder / f"testing_metrics_of_{who}_{suffix}.jsonl")
            assert set(testing) >= METRICS
        (quantas,) = _lines(folder / f"quantas_{suffix}.jsonl")
        assert list(quantas) == keys  # keyed by the transferred layer's number
        for entry in quantas.values():
            assert len(entry["quanta_weights"]) == EPOCHS + 1
            assert len(entry["quantas"]["source"]) == EPOCHS + 1
            for (ws, wt), s, t in zip(entry["quanta_weights"], entry["quantas"]["source"],
                                      entry["quantas"]["target"], strict=True):
                assert s + t == pytest.approx(1.0)
                assert s > t and ws > wt
            assert entry["quanta_weights"][0] == pytest.approx([1.1, -1.1])
            assert isinstance(entry["keras_layer_index"], int)
    target = keras.saving.load_model(folder / f"target_r_1_l_{label}.keras")
    assert [q.transferred_layer for q in quanta_layers(target)] == [int(k) for k in keys]
    assert not [p for p in folder.iterdir() if ".partial" in p.name]


def test_train_from_previous_training_resumes(expe):
    folder = expe / "digits_to_digits"
    previous = folder / "target_r_0_l_0.keras"
    if not previous.exists():
        assert _transfer(expe, 0) == 0
    before = keras.saving.load_model(previous)
    (q_before,) = quanta_layers(before)
    assert int(before.optimizer.iterations.numpy()) > 0  # the optimizer state is saved too
    last = q_before.weights_pair()
    assert _transfer(expe, 0, "--train_from_previous_training", str(previous)) == 0
    # Appended: a second line whose quanta history starts where the saved model stopped.
    _, resumed = _lines(folder / "quantas_r_0_l_0.jsonl")[-2:]
    assert resumed["0"]["quanta_weights"][0] == pytest.approx(list(last))
    assert resumed["0"]["quanta_weights"][0] != pytest.approx([1.1, -1.1])
    assert len(resumed["0"]["quanta_weights"]) == EPOCHS + 1


def test_resume_with_another_layer_is_refused(expe, capsys):
    previous = expe / "digits_to_digits" / "target_r_0_l_0.keras"
    if not previous.exists():
        assert _transfer(expe, 0) == 0
    assert _transfer(expe, 3, "--train_from_previous_training", str(previous)) == 2
    err = capsys.readouterr().err
    assert "QUANTA layers at [0]" in err and "Traceback" not in err


def test_show_only_build_prints_summaries_and_trains_nothing(expe, tmp_path, capsys):
    weights = expe / "digits_training" / "source.weights.h5"
    rc = cli.main(["-o", str(tmp_path), "-s", "digits", "-sw", str(weights), "-t", "digits",
                   "-l", "6", "--show_only_build", "--width_multiplier", "0.0625"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "quanta_6" in out and "source_trunk" in out
    assert not list(tmp_path.rglob("*"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-s", "digits", "-t", "digits", "-l", "0"], "give source_weights"),
        (["-s", "digits", "-sw", "{w}", "-t", "digits", "-l", "conv_0"],
         "layers are numbered 0-6"),
        (["-s", "digits", "-sw", "missing.weights.h5", "-t", "digits", "-l", "0"],
         "does not exist"),
        (["-s", "digits", "-sw", "{w}", "-t", "digits", "-l", "0", "-r", "0"],
         "strictly positive"),
        (["-s", "digits", "-sw", "{w}", "-t", "digits", "-l", "0", "--nb_of_target_epochs",
          "-3"], "strictly positive"),
        (["-s", "digits", "-sw", "{w}", "-t", "digits", "-l", "0", "--nb_of_target_samples",
          "x"], "not an integer"),
        (["-s", "digits", "-sw", "{w}", "-t", "imagenet", "-l", "0"], "unknown task 'imagenet'"),
        (["-s", "digits", "-sw", "{w}", "-t", "digits", "-l", "7"], "layer_to_transfer"),
        (["-s", "digits", "-sw", "{w}", "-t", "digits", "-l", "0",
          "--train_from_previous_training", "x.h5"], ".keras file"),
    ],
)
def test_bad_options_exit_2_with_usage(expe, capsys, argv, message):
    weights = str(expe / "digits_training" / "source.weights.h5")
    argv = [a.replace("{w}", weights) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: quanta") and message in err
    assert "Traceback" not in err


def test_runtime_problem_is_one_line_and_exit_2(expe, tmp_path, capsys):
    wrong = tmp_path / "wrong.weights.h5"
    wrong.write_bytes(b"not an hdf5 file")
    rc = cli.main(["-o", str(tmp_path), "-s", "digits", "-sw", str(wrong), "-t", "digits",
                   "-l", "0", "--width_multiplier", "0.0625"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quanta: error: source weights")


def test_seed_example_lines_parse_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "SourceModel.weights.h5").write_bytes(b"")
    (tmp_path / "expe").mkdir()
    (tmp_path / "expe" / "target_r_0_l_0.keras").write_bytes(b"")
    parser = cli.build_parser()
    first = parser.parse_args(
        "-o ./expe -s cifar10 -sw SourceModel.weights.h5 -t cifar10 -l 0 -r 1 --seed 42 "
        "--nb_of_target_samples 320".split()
    )
    assert (first.output_dir, first.layer_to_transfer, first.seed) == ("./expe", 0, 42)
    second = parser.parse_args(
        "-s cifar10 -sw SourceModel.weights.h5 -t cifar10 -l 0 -r 1 --seed 42 "
        "--nb_of_target_samples 320 --train_from_previous_training ./expe/target_r_0_l_0.keras"
        .split()
    )
    assert second.output_dir == "./expe"  # the seed's default
    assert second.train_from_previous_training == "./expe/target_r_0_l_0.keras"
    assert (second.nb_of_runs, second.nb_of_target_epochs) == (1, 1)


def test_module_entry_point_shows_help():
    done = subprocess.run([sys.executable, "-m", "quanta", "-h"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert "--layer_to_transfer" in done.stdout and "--train_from_previous_training" in done.stdout


def _imports(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Runs `python -X importtime ARGS` and returns it with the modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                          text=True, timeout=120)
    return done, done.stderr


@pytest.mark.parametrize("args", [
    ["-m", "quanta", "--help"],
    ["-m", "quanta.train_source", "-h"],
    ["-m", "quanta", "-s", "digits"],  # a usage error: required options missing
    ["-c", "import quanta"],
])
def test_help_usage_errors_and_import_quanta_leave_tensorflow_unloaded(args):
    done, imported = _imports(*args)
    assert done.returncode in (0, 2), done.stderr[-2000:]
    assert "| tensorflow" not in imported and "| keras" not in imported
    if args[-1] == "--help":
        assert "-v, --verbose" in done.stdout


def test_every_saved_model_loads_after_import_quanta_alone(expe, tmp_path):
    """A fresh process that imports `quanta`, then Keras, loads every model the tools save:
    a source trained with augmentation, targets of float32 and mixed-precision runs."""
    weights = expe / "digits_training" / "source.weights.h5"
    for precision in ("float32", "mixed_bfloat16"):
        assert cli.main(["-o", str(tmp_path / precision), "-s", "digits", "-sw", str(weights),
                         "-t", "digits", "-l", "3", "--nb_of_target_samples", "32",
                         "--precision", precision, "--augment_data", *COMMON]) == 0
    models = [expe / "digits_training" / "source.keras",
              *sorted(tmp_path.rglob("*.keras"))]
    assert len(models) == 5  # the source; a target and its source per precision
    script = ("import sys, quanta, keras\n"
              "for path in sys.argv[1:]:\n"
              "    model = keras.saving.load_model(path)\n"
              "    print(path, type(model.optimizer).__name__)\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, models)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    optimizers = [line.split()[-1] for line in done.stdout.splitlines()]
    assert "QuantaAdam" in optimizers, optimizers


def test_one_tidy_table_joins_lambda_s_and_metrics_by_epoch(expe, tmp_path):
    """λ_s lists start with the value before training while the metrics' epoch keys start
    at 0 for the first epoch: the table's epoch e is the state after e epochs in both."""
    weights = expe / "digits_training" / "source.weights.h5"
    assert cli.main(["-o", str(tmp_path), "-s", "digits", "-sw", str(weights), "-t", "digits",
                     "-l", "-1", "-r", "2", "--nb_of_target_epochs", "2",
                     "--nb_of_target_samples", "32", "--test_every_epoch", *COMMON]) == 0
    folder = tmp_path / "digits_to_digits"
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "quanta.tidy",
                           str(folder), "-o", str(tmp_path / "epochs.csv")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| tensorflow" not in done.stderr
    import csv

    rows = list(csv.DictReader((tmp_path / "epochs.csv").open()))
    assert len(rows) == 2 * 3 * 7  # runs x (start + 2 epochs) x seven QUANTA layers
    quantas = _lines(folder / "quantas_r_1_l_all.jsonl")[-1]
    training = _lines(folder / "training_metrics_of_target_r_1_l_all.jsonl")[-1]
    tested = _lines(folder / "testing_metrics_of_target_per_epoch_r_1_l_all.jsonl")[-1]
    for row in rows:
        if row["run"] != "1" or row["quanta_layer"] != "4":
            continue
        epoch = int(row["epoch"])
        assert float(row["lambda_s"]) == quantas["4"]["quantas"]["source"][epoch]
        if epoch == 0:
            assert row["loss"] == "" and float(row["lambda_s"]) == pytest.approx(0.9002495)
        else:
            assert float(row["loss"]) == training[str(epoch - 1)]["loss"]
            assert float(row["test_categorical_accuracy"]) == \
                tested[str(epoch - 1)]["categorical_accuracy"]
    assert list(rows[0])[:6] == ["run", "layer_to_transfer", "epoch", "quanta_layer",
                                 "lambda_s", "lambda_t"]
