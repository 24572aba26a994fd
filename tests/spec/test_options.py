"""Each experiment option is declared once, on its spec field (`quanta_spec.options`), and
reaches both command lines and the dashboard's forms from there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import Field

import quanta_spec
from quanta import cli as quanta_cli
from quanta import train_source
from quanta_client import cli as client_cli
from quanta_client import specs as client_specs
from quanta_spec import RemoteSourceSpec, RemoteTransferSpec, SourceSpec, TransferSpec
from quanta_spec.options import Option, option_of, spec_options


def flags(parser: Any, *command: str) -> set[str]:
    """Every option string of `parser` (or of its subcommand `command`)."""
    for name in command:
        parser = next(a for a in parser._actions if a.dest == "command").choices[name]
    return {s for action in parser._actions for s in action.option_strings}


def test_every_spec_option_reaches_every_command_line() -> None:
    def names(model: Any) -> set[str]:
        return {option_of(model.model_fields[n]).flags[-1] for n in spec_options(model)}

    transfer, source = names(TransferSpec), names(SourceSpec)
    assert transfer <= flags(quanta_cli.build_parser())
    assert transfer <= flags(client_cli.build_parser(), "submit")
    study_only_layers = transfer - {"--layer_to_transfer", "--train_from_previous_training",
                                    "--show_only_build"}
    assert study_only_layers <= flags(client_cli.build_parser(), "study")
    assert source <= flags(train_source.build_parser())
    assert source <= flags(client_cli.build_parser(), "train-source")


def test_the_forms_offer_every_option() -> None:
    """The dashboard's forms are generated from the API's JSON schema of these models."""
    for local, remote in ((TransferSpec, RemoteTransferSpec), (SourceSpec, RemoteSourceSpec)):
        assert set(spec_options(local)) <= set(remote.model_json_schema()["properties"])


def test_a_new_spec_field_appears_everywhere_with_no_other_edit(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Extended(TransferSpec):
        warmup_epochs: Annotated[int, Option(
            "--warmup_epochs", help="epochs before the quantas train")] = Field(
            default=2, ge=0, description="Epochs before the quantas train.")

    for module in (quanta_spec, client_cli, client_specs):
        monkeypatch.setattr(module, "TransferSpec", Extended)
    local = quanta_cli.build_parser()
    weights = tmp_path / "source.weights.h5"
    weights.write_bytes(b"")
    args = local.parse_args(["-s", "digits", "-sw", str(weights), "-t", "digits", "-l", "0",
                             "--warmup_epochs", "5"])
    spec = quanta_cli.make_spec(local, Extended, args, exclude=quanta_cli.LOCAL_OPTIONS)
    assert spec.warmup_epochs == 5
    assert "(default: 2)" in local.format_help()
    client = client_cli.build_parser()
    assert "--warmup_epochs" in flags(client, "submit")
    assert "--warmup_epochs" in flags(client, "study")
    parsed = client.parse_args(["submit", "-s", "digits", "-sw", "job:abc", "-t", "digits",
                                "-l", "0", "--warmup_epochs", "5"])

    class Offline:
        def reference(self, value: str, *_: Any) -> dict[str, str]:
            return {"job": value.split(":", 1)[1]}

        def task(self, value: str, _option: str) -> str:
            return value

    sent = client_specs.transfer_spec(parsed, Offline())  # type: ignore[arg-type]
    assert sent["warmup_epochs"] == 5
    assert "warmup_epochs" in Extended.model_json_schema()["properties"]  # the form's source


def test_an_option_not_given_is_left_to_the_service() -> None:
    """quanta-client sends only what was given: the service's spec (or a study's preset)
    decides the rest, with the same defaults its help shows."""
    parsed = client_cli.build_parser().parse_args(
        ["study", "-s", "digits", "-sw", "job:abc", "-t", "digits", "--protocol", "kes2021"])
    assert parsed.nb_of_runs is None and parsed.augment_data is None
    study = next(a for a in client_cli.build_parser()._actions
                 if a.dest == "command").choices["study"]
    assert "number of runs (default: 1)" in " ".join(study.format_help().split())
