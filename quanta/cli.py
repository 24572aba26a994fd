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

from quanta_spec import BUILTIN_TASKS
from quanta_spec.options import positive_int

TASK_HELP = f"one of {', '.join(BUILTIN_TASKS)}, or npz:PATH for a user dataset"


def existing_file(*suffixes: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not text.endswith(suffixes):
            raise argparse.ArgumentTypeError(f"'{text}' must be a {' or '.join(suffixes)} file")
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"'{text}' does not exist")
        return text

    return check


def add_common_options(parser: argparse.ArgumentParser, *, output_default: str = "./expe",
                       architecture_default: str | None = "kes2021") -> None:
    """Options shared by the transfer and source-training command lines."""
    parser.add_argument(
        "-o", "--output_dir", "--outdir", dest="output_dir", default=output_default,
        help="output directory, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=None,
        help="seed for determinism; a value >= 0 seeds every generator, otherwise no seed",
    )
    parser.add_argument("--augment_data", action="store_true", help="train on augmented data")
    parser.add_argument(
        "--train_from_previous_training", type=existing_file(".keras"), default=None,
        metavar="MODEL.keras", help="continue training from this saved model",
    )
    parser.add_argument(
        "--show_only_build", action="store_true",
        help="only build and compile the models and display their summaries",
    )
    parser.add_argument(
        "--data_dir", default=None,
        help="folder of the dataset archives (default: $QUANTA_DATA_DIR or ~/.keras/datasets)",
    )
    parser.add_argument(
        "--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"), default="float32",
        help="training precision; mixed policies keep the quantas in float32 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--architecture", choices=("kes2021", "compact2025"), default=architecture_default,
        help="the network: kes2021 (64-128-512 filters + Dense(2048), the seed's tool) or "
        "compact2025 (64-128-256 + Dense(1024), the reference's 2025 revision) (default: "
        + ("%(default)s)" if architecture_default else
           "read off the source weights file, kes2021 when it cannot tell)"),
    )
    parser.add_argument(
        "--width_multiplier", type=float, default=1.0,
        help="scale the network's filters and units (default: %(default)s, full width)",
    )
    parser.add_argument(
        "--shuffle", action="store_true",
        help="reshuffle the training samples every epoch, in an order fixed by the seed and "
        "the epoch (default: the same order every epoch, as the reference)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show TensorFlow's own log lines (start-up, devices, kernels); hidden by default",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quanta",
        description="QUANTA: measure the transferability of a source model's layer by "
        "training a target model with a 2-parameter QUANTA layer at that depth.",
    )
    parser.add_argument(
        "-s", "--source_task", required=True, help=f"task of the source model: {TASK_HELP}"
    )
    parser.add_argument(
        "-sw", "--source_weights", required=True, type=existing_file(".h5"),
        help="weights of the pre-trained source model (.h5 file)",
    )
    parser.add_argument(
        "-t", "--target_task", required=True, help=f"task of the target model: {TASK_HELP}"
    )
    parser.add_argument(
        "-l", "--layer_to_transfer", required=True, type=int,
        help="layer whose transferability is assessed (0-5: Conv2D layers, 6: the Dense layer); "
        "a negative value transfers all layers at once",
    )
    parser.add_argument(
        "-r", "--nb_of_runs", type=positive_int, default=1, help="number of runs (default: 1)"
    )
    parser.add_argument(
        "--nb_of_target_epochs", type=positive_int, default=1,
        help="epochs to train the target model (default: 1)",
    )
    parser.add_argument(
        "--nb_of_target_samples", type=positive_int, default=None,
        help="keep the first N samples of the training and test splits (default: all)",
    )
    parser.add_argument(
        "--witness", action="store_true",
        help="also train a witness (the target architecture from scratch, no transfer) in "
        "each run and report the transfer gain",
    )
    parser.add_argument(
        "--source_inference_mode", action="store_true",
        help="run the frozen source in inference mode (Dropout off) and compute its "
        "activations once, reused by every epoch: faster, not the reference's behaviour",
    )
    parser.add_argument(
        "--quanta_lr_multiplier", "--quanta_learning_rate_multiplier",
        dest="quanta_learning_rate_multiplier", type=float, default=1.0,
        help="multiply the learning rate of the quanta weights only, so they move faster "
        "than the network's (default: %(default)s)",
    )
    parser.add_argument(
        "--quanta_gradient_multiplier", dest="quanta_learning_rate_multiplier", type=float,
        default=argparse.SUPPRESS,
        help="deprecated name of --quanta_lr_multiplier",
    )
    parser.add_argument(
        "--test_every_epoch", action="store_true",
        help="evaluate the target on the test split after every epoch (the paper's protocol)",
    )
    parser.add_argument(
        "--baselines", action="store_true",
        help="also write baseline_scores.json: LogME, H-score, TransRate and GBC of the frozen "
        "source's transferred layers, LEEP and NCE of the source, on the target training "
        "samples (no training; not in the seed's tool)",
    )
    add_common_options(parser, architecture_default=None)
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
        parser.error(f"argument --{field}: {first['msg']}")


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

    scores = score_source(ScoresSpec(
        source_task=spec.source_task, source_weights=spec.source_weights,
        target_task=spec.target_task, layers=list(spec.transferred_layers),
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


def _transfer(args: argparse.Namespace, spec: Any) -> None:
    from quanta.progress import EpochProgressBar
    from quanta.transfer import run_transfer

    result = run_transfer(
        spec, args.output_dir, data_dir=args.data_dir,
        callbacks=[EpochProgressBar(spec.nb_of_runs)],
    )
    if spec.show_only_build:
        for name, text in result.summaries.items():
            print(f"== {name} ==\n{text}")
        return
    print(f"\nResults in {result.experiment_dir}")
    for run in result.runs:
        lam = ", ".join(f"{k}: {v['source']:.4f}" for k, v in run.quantas.items())
        print(
            f"run {run.run}: source accuracy {run.source_metrics['categorical_accuracy']:.4f}, "
            f"target accuracy {run.target_metrics['categorical_accuracy']:.4f}, "
            f"final λ_s by layer {{{lam}}}"
        )
        if run.witness_metrics is not None:
            print(
                f"       witness accuracy {run.witness_metrics['categorical_accuracy']:.4f}, "
                f"transfer gain {run.transfer_gain:+.4f}"
            )
    if args.baselines:
        finals: dict[str, list[float]] = {}
        for run in result.runs:
            for layer, values in run.quantas.items():
                finals.setdefault(str(layer), []).append(values["source"])
        _baselines(args, spec, result.experiment_dir, finals)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    from quanta_spec import TransferSpec

    def go(args: argparse.Namespace) -> None:
        _transfer(args, make_spec(parser, TransferSpec, args,
                                  exclude=("output_dir", "data_dir", "baselines")))

    return run_cli(parser, go, argv)


if __name__ == "__main__":
    sys.exit(main())
