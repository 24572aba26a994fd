"""Building a job's spec from the client's options, uploading local files on the way.

The options are the local command lines' (`quanta`, `quanta-train-source`); the
spec is what `POST /v1/jobs` takes (`quanta_spec`'s remote specs, as JSON).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from quanta_client.api import Client
from quanta_spec import BUILTIN_TASKS, SourceSpec, TransferSpec
from quanta_spec.images import IMAGES_PREFIX
from quanta_spec.options import spec_options
from quanta_spec.source_models import is_application

TASK_HELP = (f"one of {', '.join(BUILTIN_TASKS)}; a local .npz file (or npz:PATH) or a .zip "
             "of class folders of images (or images:PATH.zip) to upload; or upload:ID")


class Usage(Exception):
    """A bad option found after parsing (exit 2, like argparse's own errors)."""


class Files:
    """Turns the file options into references, uploading local files (once each)."""

    def __init__(self, client: Client, out: Callable[[str], None]) -> None:
        self.client, self.out = client, out
        self.done: dict[tuple[str, str], dict[str, str]] = {}

    def _upload(self, path: str, kind: str, option: str) -> dict[str, str]:
        file = Path(path)
        if not file.is_file():
            raise Usage(f"argument {option}: '{path}' does not exist")
        key = (str(file.resolve()), kind)
        if key not in self.done:
            self.out(f"uploading {file.name} ({file.stat().st_size} bytes)...")
            self.done[key] = {"upload": self.client.upload(file, kind)["id"]}
        return self.done[key]

    def reference(self, value: str, kind: str, suffixes: tuple[str, ...],
                  option: str) -> dict[str, Any]:
        """`job:ID[:RUN]`, `upload:ID`, or a local file to upload."""
        if value.startswith("job:"):
            job, _, run = value[4:].partition(":")
            if not job or (run and not run.isdigit()):
                raise Usage(f"argument {option}: '{value}' is not job:ID or job:ID:RUN")
            return {"job": job, **({"run": int(run)} if run else {})}
        if value.startswith("upload:"):
            return {"upload": value[7:]}
        if not value.endswith(suffixes):
            raise Usage(f"argument {option}: '{value}' must be a {' or '.join(suffixes)} file, "
                        "job:ID or upload:ID")
        return self._upload(value, kind, option)

    def task(self, value: str, option: str) -> str | dict[str, Any]:
        if value in BUILTIN_TASKS:
            return value
        if value.startswith("upload:"):
            return {"upload": value[7:]}
        if value.startswith(IMAGES_PREFIX) or (value.lower().endswith(".zip")
                                               and not value.startswith("npz:")):
            path = value.removeprefix(IMAGES_PREFIX)
            if not path.lower().endswith(".zip"):
                raise Usage(f"argument {option}: '{value}': a zip of class folders of images "
                            f"must be a '.zip' file ({IMAGES_PREFIX}PATH.zip)")
            return self._upload(path, "images", option)
        path = value[4:] if value.startswith("npz:") else value
        if not path.endswith(".npz"):
            raise Usage(f"argument {option}: unknown task '{value}': expected {TASK_HELP}")
        return self._upload(path, "dataset", option)


def _optional(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


#: Options naming files or tasks: turned into references (`Files`), not sent as given.
FILE_OPTIONS = ("source_task", "target_task", "source_weights", "source_model",
                "train_from_previous_training")


def _given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """Every option of `model` the user gave (`quanta_spec.options`), files aside."""
    return _optional(args, *(n for n in spec_options(model) if n not in FILE_OPTIONS))


def transfer_spec(args: argparse.Namespace, files: Files) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source_task": files.task(args.source_task, "-s/--source_task"),
        "target_task": files.task(args.target_task, "-t/--target_task"),
        # What was not given is left out (a study's preset or the service decides).
        **_given(args, TransferSpec),
    }
    if (args.source_weights is None) == (args.source_model is None):
        raise Usage("give -sw/--source_weights (a built-in network's weights) or "
                    "-sm/--source_model (your own network), one of them")
    if args.source_weights is not None:
        spec["source_weights"] = files.reference(args.source_weights, "weights", (".h5",),
                                                 "-sw/--source_weights")
    elif is_application(args.source_model):
        spec["source_model"] = args.source_model
    else:
        spec["source_model"] = files.reference(args.source_model, "model", (".keras",),
                                               "-sm/--source_model")
    if args.command == "submit":
        if args.train_from_previous_training:
            spec["train_from_previous_training"] = files.reference(
                args.train_from_previous_training, "model", (".keras",),
                "--train_from_previous_training")
    else:
        if args.layers is None and args.protocol is None:
            raise Usage("the following arguments are required: --layers (or --protocol)")
        spec.update(_optional(args, "layers", "protocol"))
        spec["include_all_at_once"] = args.include_all_at_once
        spec["baselines"] = args.baselines
        if args.until is not None:
            spec["until"] = {"ci_halfwidth": args.until,
                             **_optional(args, "max_runs", "min_runs")}
            if args.nb_of_runs is not None:
                raise Usage("argument --until: give -r/--nb_of_runs or --until, not both")
        elif args.max_runs is not None or args.min_runs is not None:
            raise Usage("arguments --max_runs/--min_runs: they go with --until")
    return spec


def scores_spec(args: argparse.Namespace, files: Files) -> dict[str, Any]:
    return {
        "source_task": files.task(args.source_task, "-s/--source_task"),
        "target_task": files.task(args.target_task, "-t/--target_task"),
        "source_weights": files.reference(args.source_weights, "weights", (".h5",),
                                          "-sw/--source_weights"),
        "layers": args.layers,
        **_optional(args, "nb_of_target_samples", "width_multiplier", "architecture"),
    }


def source_spec(args: argparse.Namespace, files: Files) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source_task": files.task(args.source_task, "-s/--source_task"),
        **_given(args, SourceSpec),
    }
    if args.train_from_previous_training:
        ref = files.reference(args.train_from_previous_training, "model", (".keras",),
                              "--train_from_previous_training")
        ref.pop("run", None)
        spec["train_from_previous_training"] = ref
    return spec
