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

from pydantic import BaseModel

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
from quanta_spec.options import add_remaining_options, add_spec_options, positive_int
from quanta_spec.source_models import check_layer_name
from quanta_spec.specs import PROTOCOLS, SourceSpec, TransferSpec

PROG = "quanta-client"


# --- option types ----------------------------------------------------------------------
def layers_option(text: str) -> list[int | str] | str:
    """`all`, or comma-separated layers: numbers 0-6 of a built-in network (-1: all at
    once), or a source model's layer names (`quanta layers MODEL` lists them)."""
    if text.strip().lower() == "all":
        return "all"
    layers: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lstrip("-").isdigit():
            if not -1 <= int(part) <= 6:
                raise argparse.ArgumentTypeError(
                    f"layers must be 0-6 or -1 (all at once), got '{part}'")
            layers.append(int(part))
        else:
            try:
                layers.append(check_layer_name(part))
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
    if not layers:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'all' nor comma-separated layers "
                                         "(e.g. 0,1,6, or conv1,block2_out)")
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


#: What a transfer or a study takes first, in the order of `quanta`'s options.
TRANSFER_FIRST = ["source_task", "source_weights", "source_model", "target_task", "nb_of_runs",
                  "nb_of_target_epochs", "nb_of_target_samples", "witness",
                  "quanta_learning_rate_multiplier", "test_every_epoch"]
#: The options every experiment shares (`quanta_spec.specs._CommonSpec`, the network).
COMMON = ["architecture", "shuffle", "seed", "augment_data", "width_multiplier", "precision"]


def _spec_options(parser: argparse.ArgumentParser, model: type[BaseModel],
                  names: list[str]) -> list[str]:
    """The spec's options (`quanta_spec.options`), left unset unless given, so that the
    service's spec (its defaults, a study's preset) decides the rest."""
    return add_spec_options(parser, model, names, service=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = sub.add_parser("submit", help="submit a transfer experiment (the `quanta` options)")
    added = _spec_options(submit, TransferSpec, [
        *TRANSFER_FIRST, *COMMON, "layer_to_transfer", "train_from_previous_training",
        "show_only_build"])
    add_remaining_options(submit, TransferSpec, added, service=True)
    _follow_options(submit)
    _connection(submit, top=False)

    study = sub.add_parser("study", help="measure several layers over several runs, spread "
                           "over every worker")
    added = _spec_options(study, TransferSpec, [*TRANSFER_FIRST, *COMMON])
    study.add_argument("--layers", type=layers_option, default=None,
                       help="'all' (0-6) or comma-separated layers, e.g. 0,3,6 (-1: all at "
                       "once); required unless --protocol gives them")
    study.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                       help="a preset: kes2021 is the paper's protocol (layers 0-6, 30 runs, 60 "
                       "epochs, augmentation, the kes2021 network, test every epoch); options "
                       "given explicitly override it")
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
    # a study's jobs each transfer one of --layers, from the source, from scratch
    add_remaining_options(study, TransferSpec, [
        *added, "layer_to_transfer", "train_from_previous_training", "show_only_build"],
        service=True)
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
    added = _spec_options(source, SourceSpec, [
        "source_task", "nb_of_epochs", "nb_of_samples", "train_from_previous_training",
        "show_only_build", *COMMON])
    add_remaining_options(source, SourceSpec, added, service=True)
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
