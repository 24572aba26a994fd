"""One tidy table of an experiment folder: a row per (run, layer label, epoch, QUANTA layer)
with λ_s, λ_t and that epoch's metrics, from the seed's JSONL files, which stay as they are.

The seed's files are awkward to join: `training_metrics_of_target_*.jsonl` maps epoch
indices "0", "1", ... to the metrics after that epoch, while `quantas_*.jsonl` lists λ_s
with the value before training first. Here epoch 0 is the start (λ_s as initialised, no
metrics) and epoch e ≥ 1 is the state after e epochs, in both.

    python -m quanta.tidy expe/digits_to_digits -o epochs.csv

or, from Python (pandas is not needed, but reads it as is):

    from quanta.tidy import tidy_rows
    rows = tidy_rows("expe/digits_to_digits")
    # pandas.DataFrame(rows)

Imports nothing of TensorFlow: results can be read where the library cannot train.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quanta_spec.file_names import run_file_names

_QUANTAS = re.compile(r"^quantas_r_(\d+)_l_(\d+|all)\.jsonl$")
#: The leading columns; the metrics follow, then the test metrics as `test_{name}`.
KEY_COLUMNS = ("run", "layer_to_transfer", "epoch", "quanta_layer", "lambda_s", "lambda_t")


def _last_line(path: Path) -> dict[str, Any] | None:
    """The file's last JSON line (JSONL files are appended to: the latest run is last)."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def tidy_rows(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of every run in `folder` (an `{source}_to_{target}` folder), sorted by run,
    layer label, epoch and QUANTA layer."""
    folder = Path(folder)
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("quantas_r_*_l_*.jsonl")):
        match = _QUANTAS.match(path.name)
        if match is None:
            continue
        run, label = int(match.group(1)), match.group(2)
        names = run_file_names(run, label)
        quantas = _last_line(path) or {}
        training = _last_line(folder / names["target_training"]) or {}
        testing = _last_line(folder / names["target_testing_per_epoch"]) or {}
        for layer, entry in quantas.items():
            for epoch, (lam_s, lam_t) in enumerate(zip(entry["quantas"]["source"],
                                                       entry["quantas"]["target"],
                                                       strict=True)):
                row: dict[str, Any] = dict(zip(KEY_COLUMNS, (run, label, epoch, int(layer),
                                                             lam_s, lam_t), strict=True))
                # Metrics after epoch e are the seed's epoch index e - 1.
                row.update(training.get(str(epoch - 1), {}))
                row.update({f"test_{k}": v for k, v in testing.get(str(epoch - 1), {}).items()})
                rows.append(row)
    rows.sort(key=lambda r: (r["run"], r["layer_to_transfer"], r["epoch"], r["quanta_layer"]))
    return rows


def write_csv(rows: Sequence[dict[str, Any]], out: Any) -> None:
    """`rows` as CSV: the key columns, then every other column in order of appearance."""
    columns = list(KEY_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quanta.tidy",
        description="One CSV row per (run, layer, epoch, QUANTA layer): λ_s, λ_t and the "
        "epoch's metrics, from an experiment folder's JSONL files (epoch 0: the start).")
    parser.add_argument("folder", help="a {source}_to_{target} folder of the seed's layout")
    parser.add_argument("-o", "--output", help="CSV file to write (default: standard output)")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        parser.error(f"'{args.folder}' is not a folder")
    rows = tidy_rows(args.folder)
    if not rows:
        parser.error(f"no quantas_r_*_l_*.jsonl in '{args.folder}'")
    if args.output:
        with open(args.output, "w", newline="") as out:
            write_csv(rows, out)
    else:
        write_csv(rows, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
