"""`quanta-train-source`: trains the source model a QUANTA experiment transfers from.

Writes `{output_dir}/{source_task}_training/` with `source.keras`,
`source.weights.h5` (what `quanta -sw` takes) and the metrics JSONL files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quanta.cli import add_common_options, make_spec, run_cli
from quanta_spec import SourceSpec
from quanta_spec.options import add_spec_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quanta-train-source", description="Train a source model for QUANTA experiments."
    )
    added = add_spec_options(parser, SourceSpec, ["source_task", "nb_of_epochs",
                                                  "nb_of_samples"])
    add_common_options(parser, SourceSpec, added)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def go(args: argparse.Namespace) -> None:
        spec = make_spec(parser, SourceSpec, args)  # a usage error before TensorFlow loads
        from quanta.progress import EpochProgressBar
        from quanta.source_training import train_source

        result = train_source(
            spec, args.output_dir, data_dir=args.data_dir, callbacks=[EpochProgressBar()]
        )
        if spec.show_only_build:
            print(result.summary)
            return
        print(
            f"\nSource model in {result.training_dir}: test accuracy "
            f"{result.test_metrics['categorical_accuracy']:.4f}"
        )

    return run_cli(parser, go, argv)


if __name__ == "__main__":
    sys.exit(main())
