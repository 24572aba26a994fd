"""`quanta`: the seed's command line for QUANTA transfer experiments.

Options, defaults and checks are the seed's (`quanta.py -h`). Bad input exits with
code 2 and a one-line reason; a problem found while running (a missing dataset, weights
that do not fit) exits 2 as well, since it is the user's to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from quanta_spec.options import add_remaining_options, add_spec_options


def existing_file(*suffixes: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not text.endswith(suffixes):
            raise argparse.ArgumentTypeError(f"'{text}' must be a {' or '.join(suffixes)} file")
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"'{text}' does not exist")
        return text

    return check


def source_model_arg(text: str) -> str:
    """`-sm`: an existing `.keras` file or `keras.applications.NAME`."""
    from quanta_spec.source_models import check_source_model, is_application

    try:
        check_source_model(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not is_application(text) and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"'{text}' does not exist")
    return text


def add_common_options(parser: argparse.ArgumentParser, model: type[BaseModel],
                       added: Sequence[str] = (), *, output_default: str = "./expe") -> None:
    """The options after a command's own: the output folder, the spec's common options
    (`quanta_spec.options`), the data folder, then any spec option not added yet (`added`),
    and `-v`."""
    parser.add_argument(
        "-o", "--output_dir", "--outdir", dest="output_dir", default=output_default,
        help="output directory, created if missing (default: %(default)s)",
    )
    common = add_spec_options(
        parser, model, ["seed", "augment_data", "train_from_previous_training",
                        "show_only_build"],
        types={"train_from_previous_training": existing_file(".keras")})
    parser.add_argument(
        "--data_dir", default=None,
        help="folder of the dataset archives (default: $QUANTA_DATA_DIR or ~/.keras/datasets)",
    )
    common += add_spec_options(parser, model, ["precision", "architecture", "width_multiplier",
                                               "shuffle"])
    add_remaining_options(parser, model, [*added, *common],
                          types={"source_weights": existing_file(".h5")})
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show TensorFlow's own log lines (start-up, devices, kernels); hidden by default",
    )


#: `quanta`'s options that are not the spec's: where files go and what else is done.
LOCAL_OPTIONS = ("output_dir", "data_dir", "baselines", "mlflow", "mlflow_timeout")


def build_parser() -> argparse.ArgumentParser:
    from quanta_spec import TransferSpec

    parser = argparse.ArgumentParser(
        prog="quanta",
        description="QUANTA: measure the transferability of a source model's layer by "
        "training a target model with a 2-parameter QUANTA layer at that depth.",
    )
    added = add_spec_options(
        parser, TransferSpec,
        ["source_task", "source_weights", "source_model", "target_task", "layer_to_transfer",
         "nb_of_runs", "nb_of_target_epochs", "nb_of_target_samples", "witness",
         "source_inference_mode", "quanta_learning_rate_multiplier", "test_every_epoch",
         "preprocess", "resize_method", "init_from_source"],
        types={"source_weights": existing_file(".h5"), "source_model": source_model_arg})
    parser.add_argument(
        "--mlflow", metavar="URI", default=None,
        help="also log the experiment as an MLflow run on this tracking server (its "
        "options as params, every epoch's metrics and λ_s, the JSONL files and plots); a "
        "server that does not answer costs at most --mlflow_timeout seconds and a warning "
        "(needs the mlflow extra)",
    )
    parser.add_argument("--mlflow_timeout", type=float, default=20.0, metavar="S",
                        help="longest wait for the MLflow export (default: %(default)s)")
    parser.add_argument(
        "--baselines", action="store_true",
        help="also write baseline_scores.json: LogME, H-score, TransRate and GBC of the frozen "
        "source's transferred layers, LEEP and NCE of the source, on the target training "
        "samples (no training; not in the seed's tool)",
    )
    add_common_options(parser, TransferSpec, added)
    return parser


def make_spec(
    parser: argparse.ArgumentParser, model: type[BaseModel], args: argparse.Namespace,
    exclude: Sequence[str] = ("output_dir", "data_dir"),
) -> Any:
    """Validates the options with the spec model; a failure is a usage error (exit 2)."""
    values = {k: v for k, v in vars(args).items() if k not in (*exclude, "verbose")}
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"][:1])
        message = str(first["msg"]).removeprefix("Value error, ")
        parser.error(f"argument --{field}: {message}" if field else message)


def run_cli(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], None],
            argv: Sequence[str] | None) -> int:
    """Parses, runs, and turns the user's problems into one line and exit code 2."""
    args = parser.parse_args(argv)
    if not args.verbose:  # before TensorFlow is imported, which is when it reads it
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from quanta.errors import Cancelled, QuantaError

    try:
        main(args)
    except Cancelled as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except QuantaError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _baselines(args: argparse.Namespace, spec: Any, folder: Path,
               finals: dict[str, list[float]]) -> None:
    """`baseline_scores.json` beside the run files, and the scores beside the mean final
    λ_s of each transferred layer."""
    from quanta.source_scores import score_source
    from quanta_spec.scores import ScoresSpec

    layers = list(finals) if spec.own_network else list(spec.transferred_layers)
    scores = score_source(ScoresSpec(
        source_task=spec.source_task, source_weights=spec.source_weights,
        source_model=spec.source_model, preprocess=spec.preprocess,
        resize_method=spec.resize_method,
        target_task=spec.target_task, layers=layers,
        architecture=spec.architecture, width_multiplier=spec.width_multiplier,
        nb_of_target_samples=spec.nb_of_target_samples), folder, data_dir=args.data_dir)
    names = ("logme", "h_score", "transrate", "gbc")
    print(f"\nBaseline scores in {scores.path}")
    print(f"{'layer':>5}  {'mean λ_s':>9}  " + "  ".join(f"{n:>10}" for n in names))
    for layer, values in scores.scores["layers"].items():
        lam = finals.get(layer)
        lam_text = f"{sum(lam) / len(lam):9.4f}" if lam else f"{'':>9}"
        print(f"{layer:>5}  {lam_text}  " + "  ".join(
            f"{values[n]:10.4g}" if values.get(n) is not None else f"{'n/a':>10}"
            for n in names))
    source = scores.scores["source"]
    print("source: " + ", ".join(f"{k.upper()} {v:.4f}" for k, v in source.items()
                                 if v is not None))


def _mlflow(args: argparse.Namespace, spec: Any, folder: Path) -> None:
    """The experiment as an MLflow run (`quanta.mlflow_export`), bounded in time."""
    import logging

    from quanta import mlflow_export

    logging.basicConfig(format=f"{Path(sys.argv[0]).name}: %(message)s")
    run_id = mlflow_export.export_bounded(
        lambda: mlflow_export.export_run(
            args.mlflow, folder, spec.model_dump(mode="json"),
            run_name=f"{folder.name} layer {spec.layer_label}", layer=spec.layer_label),
        args.mlflow_timeout, "this experiment")
    if run_id:
        print(f"MLflow run {run_id} on {args.mlflow}")


def _transfer(args: argparse.Namespace, spec: Any) -> None:
    from quanta.progress import EpochProgressBar
    from quanta.transfer import run_transfer

    result = run_transfer(
        spec, args.output_dir, data_dir=args.data_dir,
        callbacks=[EpochProgressBar(spec.nb_of_runs, witness=spec.witness)],
    )
    if spec.show_only_build:
        for name, text in result.summaries.items():
            print(f"== {name} ==\n{text}")
        return
    print(f"\nResults in {result.experiment_dir}")
    for run in result.runs:
        lam = ", ".join(f"{k}: {v['source']:.4f}" for k, v in run.quantas.items())
        source = run.source_metrics.get("categorical_accuracy")
        source_text = "n/a" if source is None else f"{source:.4f}"
        print(
            f"run {run.run}: source accuracy {source_text}, "
            f"target accuracy {run.target_metrics['categorical_accuracy']:.4f}, "
            f"final λ_s by layer {{{lam}}}"
        )
        if run.witness_metrics is not None:
            print(
                f"       witness accuracy {run.witness_metrics['categorical_accuracy']:.4f}, "
                f"transfer gain {run.transfer_gain:+.4f}"
            )
    if args.mlflow:
        _mlflow(args, spec, result.experiment_dir)
    if args.baselines:
        finals: dict[str, list[float]] = {}
        for run in result.runs:
            for layer, values in run.quantas.items():
                finals.setdefault(str(layer), []).append(values["source"])
        _baselines(args, spec, result.experiment_dir, finals)


def layers_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quanta layers",
        description="List the layers of a Keras network that a QUANTA layer can follow, in "
        "graph order, one a line: name, class, output shape, parameters. The names are "
        "what -l/--layer_to_transfer takes with --source_model.",
    )
    parser.add_argument("model", metavar="MODEL",
                        help="a .keras file, or keras.applications.NAME")
    parser.add_argument("--all", action="store_true",
                        help="also list the layers that cannot be transferred, and why")
    parser.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    return parser


def layers_main(argv: Sequence[str]) -> int:
    """`quanta layers MODEL`: a `.keras` file is read without TensorFlow; an application
    is built without its weights (its layers are all that is needed)."""
    parser = layers_parser()

    def go(args: argparse.Namespace) -> None:
        from quanta_spec.keras_graph import GraphError, format_layers, read_keras_file
        from quanta_spec.source_models import check_source_model, is_application

        try:
            check_source_model(args.model)
        except ValueError as exc:
            parser.error(str(exc))
        if is_application(args.model):
            from quanta.any_network import application_graph

            graph = application_graph(args.model)
        else:
            if not Path(args.model).is_file():
                parser.error(f"'{args.model}' does not exist")
            try:
                graph = read_keras_file(args.model)
            except GraphError as exc:
                from quanta.errors import QuantaError

                raise QuantaError(f"{Path(args.model).name}: {exc}") from None
        _print_piped(format_layers(graph, every=args.all))

    return run_cli(parser, go, argv)


def _print_piped(text: str) -> None:
    """`text` on stdout; a reader that stops early (`quanta layers MODEL | head`) is not an
    error, as for any Unix tool: the rest goes nowhere, and the exit status stays 0."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's exit flush is quiet


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["layers"]:
        return layers_main(argv[1:])
    parser = build_parser()
    from quanta_spec import TransferSpec

    def go(args: argparse.Namespace) -> None:
        _transfer(args, make_spec(parser, TransferSpec, args, exclude=LOCAL_OPTIONS))

    return run_cli(parser, go, argv)


if __name__ == "__main__":
    sys.exit(main())
