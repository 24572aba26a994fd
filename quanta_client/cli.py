"""`quanta-client`: run QUANTA experiments on a QUANTA service from the command line.

    quanta-client submit -s cifar10 -sw SourceModel.weights.h5 -t cifar100 -l 0 --wait
    quanta-client study -s cifar10 -sw job:ID -t cifar100 --layers all -r 30 --download expe
    quanta-client train-source -s cifar10 --nb_of_epochs 60 --seed 42 --wait
    quanta-client scores -s cifar10 -sw job:ID -t cifar100 --wait
    quanta-client compare STUDY_A STUDY_B --plot compare.png
    quanta-client status ID | wait ID | cancel ID | download ID DIR

`submit` and `train-source` take the local command lines' options (`quanta`,
`quanta-train-source`). Files are given as local paths (uploaded first: `.h5` weights,
`.keras` models, `.npz` datasets), or as `job:ID` (a finished job's file; `job:ID:RUN`
for a run of a transfer job) or `upload:ID`. The job id is printed on stdout; progress
and results go to stderr (`wait` prints the results on stdout). `--download DIR`
writes the files in the local command line's layout.

The server and token come from `--server`/`--token` or QUANTA_SERVER/QUANTA_TOKEN.
Exit codes: 0 success, 1 the job failed or was cancelled (or a server error), 2 bad
usage, a request the service refused (4xx), or no service at that address.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quanta_client.api import DEFAULT_SERVER, ApiError, Client, ClientError, Unreachable
from quanta_client.downloads import download_job
from quanta_client.follow import TERMINAL, follow
from quanta_client.report import describe_job, report
from quanta_client.specs import (
    TASK_HELP,
    Files,
    Usage,
    scores_spec,
    source_spec,
    transfer_spec,
)
from quanta_client.tables import compare_table
from quanta_spec.networks import NETWORKS
from quanta_spec.options import positive_int
from quanta_spec.specs import PROTOCOLS

PROG = "quanta-client"


# --- option types ----------------------------------------------------------------------
def layers_option(text: str) -> list[int] | str:
    """`all`, or comma-separated layer numbers (0-6, -1 for all seven at once)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not 'all' nor comma-separated layer numbers (e.g. 0,1,6)") from None
    if not layers or any(not -1 <= k <= 6 for k in layers):
        raise argparse.ArgumentTypeError(f"layers must be 0-6 or -1 (all at once), got '{text}'")
    return layers


# --- parser ----------------------------------------------------------------------------
def _connection(parser: argparse.ArgumentParser, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--server", default=default,
                        help=f"service URL (default: $QUANTA_SERVER, else {DEFAULT_SERVER})")
    parser.add_argument("--token", default=default,
                        help="API token, sent as 'Authorization: Bearer' (default: $QUANTA_TOKEN)")


def _follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="follow the job with a progress bar until it ends")
    parser.add_argument("--download", metavar="DIR", default=None,
                        help="when it succeeds, write its files under DIR in the local command "
                        "line's layout (implies --wait)")
    parser.add_argument("--no-events", dest="events", action="store_false",
                        help="poll the job instead of streaming its events")


def _common_spec_options(parser: argparse.ArgumentParser, source: bool = False) -> None:
    parser.add_argument("--architecture", choices=tuple(NETWORKS), default=None,
                        help="the network: kes2021 (64-128-512 filters + Dense(2048), the "
                        "seed's tool) or compact2025 (64-128-256 + Dense(1024), the 2025 "
                        "revision) (default: " + ("kes2021)" if source else
                                                  "read off the source weights file)"))
    parser.add_argument("--shuffle", action="store_true",
                        help="reshuffle the training samples every epoch, in an order fixed by "
                        "the seed and the epoch (default: the same order every epoch, as the "
                        "reference)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for determinism; a value >= 0 seeds every generator")
    parser.add_argument("--augment_data", action="store_true", help="train on augmented data")
    parser.add_argument("--width_multiplier", type=float, default=None,
                        help="scale the network's filters and units (the service's default: 1.0)")
    parser.add_argument("--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"),
                        default=None, help="training precision (the service's default: float32)")


def _transfer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-s", "--source_task", required=True, help=f"source task: {TASK_HELP}")
    parser.add_argument("-sw", "--source_weights", required=True,
                        help="source weights: a local .h5 file, job:SOURCE_JOB_ID or upload:ID")
    parser.add_argument("-t", "--target_task", required=True, help=f"target task: {TASK_HELP}")
    parser.add_argument("-r", "--nb_of_runs", type=positive_int, default=1,
                        help="number of runs (default: 1)")
    parser.add_argument("--nb_of_target_epochs", type=positive_int, default=1,
                        help="epochs to train the target model (default: 1)")
    parser.add_argument("--nb_of_target_samples", type=positive_int, default=None,
                        help="keep the first N samples of the training and test splits")
    parser.add_argument("--witness", action="store_true",
                        help="also train a witness (no transfer) in each run; reports the "
                        "transfer gain")
    parser.add_argument("--quanta_lr_multiplier", "--quanta_learning_rate_multiplier",
                        dest="quanta_learning_rate_multiplier", type=float, default=None,
                        help="multiply the learning rate of the quanta weights only, so they "
                        "move faster than the network's (the service's default: 1.0)")
    parser.add_argument("--quanta_gradient_multiplier", dest="quanta_learning_rate_multiplier",
                        type=float, default=argparse.SUPPRESS,
                        help="deprecated name of --quanta_lr_multiplier")
    parser.add_argument("--test_every_epoch", action="store_true",
                        help="evaluate the target on the test split after every epoch (the "
                        "paper's protocol)")
    _common_spec_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = sub.add_parser("submit", help="submit a transfer experiment (the `quanta` options)")
    _transfer_options(submit)
    submit.add_argument("-l", "--layer_to_transfer", type=int, required=True,
                        help="layer to assess (0-5: Conv2D, 6: Dense(1024); negative: all)")
    submit.add_argument("--train_from_previous_training", default=None, metavar="MODEL",
                        help="continue a saved target: a local .keras file, job:ID[:RUN] or "
                        "upload:ID")
    submit.add_argument("--show_only_build", action="store_true",
                        help="only build the models and print their summaries")
    _follow_options(submit)
    _connection(submit, top=False)

    study = sub.add_parser("study", help="measure several layers over several runs, spread "
                           "over every worker")
    _transfer_options(study)
    study.add_argument("--layers", type=layers_option, default=None,
                       help="'all' (0-6) or comma-separated layers, e.g. 0,3,6 (-1: all at "
                       "once); required unless --protocol gives them")
    study.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                       help="a preset: kes2021 is the paper's protocol (layers 0-6, 30 runs, 60 "
                       "epochs, augmentation, the kes2021 network, test every epoch); options "
                       "given explicitly override it")
    # Unset unless given, so that the service's preset (or its defaults) applies.
    study.set_defaults(nb_of_runs=None, nb_of_target_epochs=None, augment_data=None,
                       witness=None, shuffle=None, test_every_epoch=None)
    study.add_argument("--include_all_at_once", action="store_true",
                       help="also measure the seven layers transferred at once")
    study.add_argument("--baselines", action="store_true",
                       help="also report baseline scores of the source per layer (LogME, "
                       "H-score, TransRate, GBC; LEEP, NCE) and their rank correlations with λ_s")
    study.add_argument("--until", type=float, default=None, metavar="HALFWIDTH",
                       help="run each layer until the 95%% CI half-width of its final λ_s is "
                       "at most HALFWIDTH (instead of -r runs)")
    study.add_argument("--max_runs", type=positive_int, default=None,
                       help="with --until: most runs per layer (the service's default: 30)")
    study.add_argument("--min_runs", type=positive_int, default=None,
                       help="with --until: runs per layer to start with (default: 3)")
    _follow_options(study)
    _connection(study, top=False)

    scores = sub.add_parser("scores", help="baseline transferability scores of a source's "
                            "layers on a target task (no training)")
    scores.add_argument("-s", "--source_task", required=True, help=f"source task: {TASK_HELP}")
    scores.add_argument("-sw", "--source_weights", required=True,
                        help="source weights: a local .h5 file, job:SOURCE_JOB_ID or upload:ID")
    scores.add_argument("-t", "--target_task", required=True, help=f"target task: {TASK_HELP}")
    scores.add_argument("--layers", type=layers_option, default="all",
                        help="'all' (default) or comma-separated layers 0-6")
    scores.add_argument("--nb_of_target_samples", type=positive_int, default=None,
                        help="score the first N target training samples (default: all)")
    scores.add_argument("--width_multiplier", type=float, default=None,
                        help="the source network's width multiplier (default: 1.0)")
    scores.add_argument("--architecture", choices=("kes2021", "compact2025"), default=None,
                        help="the source network (default: read off the weights file)")
    _follow_options(scores)
    _connection(scores, top=False)

    compare = sub.add_parser("compare", help="compare studies layer by layer (difference of "
                             "mean λ_s, Welch's p-value)")
    compare.add_argument("study_ids", metavar="ID", nargs="+",
                         help="two studies or more; the others are compared with the first")
    compare.add_argument("--partial", action="store_true",
                         help="also compare unfinished studies on their runs so far")
    compare.add_argument("--plot", metavar="PNG", default=None,
                         help="also write the comparison plot to this file")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _connection(compare, top=False)

    source = sub.add_parser("train-source", help="train a source model (the "
                            "`quanta-train-source` options)")
    source.add_argument("-s", "--source_task", required=True, help=f"task: {TASK_HELP}")
    source.add_argument("--nb_of_epochs", type=positive_int, default=1,
                        help="training epochs (default: 1)")
    source.add_argument("--nb_of_samples", type=positive_int, default=None,
                        help="keep the first N samples of the training and test splits")
    source.add_argument("--train_from_previous_training", default=None, metavar="MODEL",
                        help="continue a saved source: a local .keras file, job:ID or upload:ID")
    source.add_argument("--show_only_build", action="store_true",
                        help="only build the model and print its summary")
    _common_spec_options(source, source=True)
    _follow_options(source)
    _connection(source, top=False)

    for name, text in (("status", "show a job"), ("wait", "follow a job until it ends"),
                       ("cancel", "cancel a job (a study: all its jobs)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("job_id", metavar="ID")
        if name == "status":
            command.add_argument("--json", action="store_true", help="print the job as JSON")
        if name == "wait":
            command.add_argument("--download", metavar="DIR", default=None,
                                 help="then write its files under DIR")
            command.add_argument("--no-events", dest="events", action="store_false",
                                 help="poll instead of streaming events")
        _connection(command, top=False)
    download = sub.add_parser("download", help="write a job's files in the seed's layout")
    download.add_argument("job_id", metavar="ID")
    download.add_argument("directory", metavar="DIR")
    _connection(download, top=False)
    return parser


# --- commands --------------------------------------------------------------------------
def _finish(client: Client, job: dict[str, Any], args: argparse.Namespace,
            err: Callable[[str], None]) -> int:
    """Wait (with --wait or --download), report, download; the exit code."""
    directory = getattr(args, "download", None)
    if not (getattr(args, "wait", False) or directory):
        return 0
    job = follow(client, job, events=getattr(args, "events", True))
    # After submit, stdout holds the job id alone (for `ID=$(quanta-client submit ...)`);
    # `wait` is asked for the results, so they go to stdout there.
    report(client, job, print if args.command == "wait" else err)
    if job["status"] != "succeeded":
        return 1
    if directory:
        files = download_job(client, job, directory)
        err(f"{len(files)} files written under {directory}")
    return 0


def _compare(client: Client, args: argparse.Namespace, err: Callable[[str], None]) -> int:
    if len(args.study_ids) < 2:
        raise Usage("compare takes two study ids or more")
    params = {"ids": ",".join(args.study_ids), "partial": str(args.partial).lower()}
    body = client.json("GET", "/v1/studies/compare", params=params)
    if args.json:
        print(json.dumps(body, indent=1))
    else:
        compare_table(body, print)
    if args.plot:
        png = client.request("GET", "/v1/studies/compare.png", params=params).content
        Path(args.plot).write_bytes(png)
        err(f"plot written to {args.plot}")
    return 0


def run(args: argparse.Namespace, err: Callable[[str], None]) -> int:
    with Client(args.server, args.token) as client:
        command = args.command
        if command in ("submit", "study", "train-source", "scores"):
            files = Files(client, err)
            if command == "train-source":
                job = client.submit("source", source_spec(args, files))
            elif command == "scores":
                job = client.submit("scores", scores_spec(args, files))
            else:
                kind = "study" if command == "study" else "transfer"
                job = client.submit(kind, transfer_spec(args, files))
            print(job["id"], flush=True)
            args.job_id = job["id"]  # named if the user interrupts the wait
            if job["kind"] == "study":
                err(f"study {job['id']}: {job['progress']['total']} transfer jobs queued")
            return _finish(client, job, args, err)
        if command == "compare":
            return _compare(client, args, err)
        if command == "status":
            job = client.job(args.job_id)
            if args.json:
                print(json.dumps(job, indent=1))
            else:
                print(describe_job(job))
            return 1 if job["status"] in ("failed", "cancelled") else 0
        if command == "wait":
            args.wait = True
            return _finish(client, client.job(args.job_id), args, err)
        if command == "cancel":
            job = client.cancel(args.job_id)
            print(f"{job['id']} {job['status']}"
                  + (" (stops at its next batch)" if job["status"] == "running" else ""))
            return 0
        if command == "download":
            job = client.job(args.job_id)
            if job["status"] not in TERMINAL:
                raise Usage(f"job {job['id']} is {job['status']}; its files are recorded when "
                            f"it ends ({PROG} wait {job['id']})")
            if job["status"] != "succeeded":
                err(f"job {job['id']} {job['status']}: its files are what it wrote before")
            files = download_job(client, job, args.directory)
            err(f"{len(files)} files written under {args.directory}")
            return 0
    raise Usage(f"unknown command {command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def err(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        return run(args, err)
    except Usage as exc:
        parser.print_usage(sys.stderr)
        err(f"{PROG}: error: {exc}")
        return 2
    except Unreachable as exc:
        err(f"{PROG}: error: {exc}")
        return 2
    except ApiError as exc:
        err(f"{PROG}: error: {exc}")
        return 2 if exc.status_code < 500 else 1
    except ClientError as exc:
        err(f"{PROG}: error: {exc}")
        return 1
    except KeyboardInterrupt:
        job = getattr(args, "job_id", None)
        err(f"{PROG}: interrupted; the job goes on on the service"
            + (f" ({PROG} cancel {job} stops it)" if job else ""))
        return 130


if __name__ == "__main__":
    sys.exit(main())
