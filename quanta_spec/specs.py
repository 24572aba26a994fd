"""The pydantic models of a QUANTA experiment.

One model per kind of experiment, used everywhere: the command line builds it from
its options, the API validates request bodies with it, the worker reads it back
from the database. Field names are the seed command line's option names, and the
defaults and checks are the seed's.

Local specs (`SourceSpec`, `TransferSpec`) may name files by path. Remote specs
(`RemoteSourceSpec`, `RemoteTransferSpec`) are what the API accepts: files are
named by reference to a finished job or an upload, never by a server path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypeAliasType

from quanta_spec.images import DEFAULT_RESIZE_METHOD, RESIZE_METHODS
from quanta_spec.networks import DEFAULT_ARCHITECTURE, Architecture
from quanta_spec.options import Option
from quanta_spec.source_models import (
    APPLICATION_PREFIX,
    MAX_LAYERS_AT_ONCE,
    check_preprocess,
    check_source_model,
)
from quanta_spec.stopping import UntilRule
from quanta_spec.tasks import BUILTIN_TASKS

#: The six Conv2D layers (0-5) and the Dense layer (6).
NB_TRANSFERABLE_LAYERS = 7
#: The `{l}` of the file names when every layer is transferred at once.
ALL_LAYERS_LABEL = "all"
#: Most child jobs one study may fan out to (the paper's protocol is 8 entries x 30 runs).
MAX_STUDY_JOBS = 1000

#: One named schema (`TaskName`) wherever a task is asked for, not an enum per field.
BuiltinTask = TypeAliasType("TaskName", Literal[BUILTIN_TASKS])  # type: ignore[valid-type]
#: How a command line names the tasks it takes.
TASK_HELP = (f"one of {', '.join(BUILTIN_TASKS)}, npz:PATH for a user dataset, or "
             "images:PATH.zip for a zip of class folders of images")
ResizeMethod = TypeAliasType("ResizeMethod", Literal[RESIZE_METHODS])  # type: ignore[valid-type]
ObjectId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def layer_label(layer_to_transfer: int | str) -> str:
    """The `{l}` used in file names: the layer number (or name), or `all` for a negative
    value (a number stored as text, as JSON specs may hold it, is a number)."""
    layer_to_transfer = layer_value(layer_to_transfer)
    if isinstance(layer_to_transfer, str):
        return layer_to_transfer
    return ALL_LAYERS_LABEL if layer_to_transfer < 0 else str(layer_to_transfer)


def ordered_layers(keys: Any) -> list[str]:
    """Layer keys as results show them: the built-in networks' numbers in order, a user
    network's names in the order first met (graph order, as the library records them)."""
    unique = list(dict.fromkeys(str(k) for k in keys))
    if all(k.lstrip("-").isdigit() for k in unique):
        return sorted(unique, key=int)
    return unique


def entry_order(entry: str) -> tuple[int, int]:
    """A sort key of a study's entries: the built-in networks' layers by number, a user
    network's names as they come (the sort is stable), `all` last."""
    if entry == ALL_LAYERS_LABEL:
        return (2, 0)
    return (0, int(entry)) if entry.lstrip("-").isdigit() else (1, 0)


#: A layer: a built-in network's number (negative: all at once), or a layer's name.
LayerRef = int | Annotated[str, Field(min_length=1, max_length=100,
                                      pattern=r"^[A-Za-z0-9_.\-]+$")]


def layer_value(value: Any) -> Any:
    """A layer as a spec holds it: `-l 3` from a command line (or "3" in stored JSON) is
    the number 3; a name stays a name."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _check_network_options(spec: Any) -> None:
    """The options of the built-in networks and those of a user's network, each with its
    own kind of source."""
    if spec.source_model is None:
        for name in ("preprocess", "init_from_source"):
            if getattr(spec, name):
                raise ValueError(f"{name} is for a source_model (your own network)")
        return
    if spec.architecture is not None or spec.width_multiplier != 1.0:
        raise ValueError("architecture and width_multiplier are the built-in networks'; a "
                         "source_model has its own")
    if spec.precision != "float32":
        raise ValueError("a source_model trains in float32 (mixed precision is for the "
                         "built-in networks)")


def run_seed(seed: int | None, run: int) -> int | None:
    """THE seed of run `run` of a multi-run experiment: `seed + run` when seeded (>= 0),
    else None (no seed), so that any run can be reproduced or resumed on its own."""
    return seed + run if seed is not None and seed >= 0 else None


def task_label(task: str) -> str:
    """The name a task takes in folder names: the task name, or a user file's stem."""
    for prefix, suffix in (("npz:", ".npz"), ("images:", ".zip")):  # quanta_spec.images
        if task.startswith(prefix):
            name = task[len(prefix):].replace("\\", "/").rsplit("/", 1)[-1]
            return name[:-len(suffix)] if name.lower().endswith(suffix) else name
    return task


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobRef(_Strict):
    """A file produced by an earlier job of this service."""

    job: ObjectId = Field(description="Id of a finished job.")
    run: int = Field(
        default=0, ge=0, description="For a transfer job: which run's target model to use."
    )

    @model_serializer(mode="wrap")
    def _omit_default_run(self, handler: Any):  # no return type: it would become the schema
        """`{"job": ID}` as given: a source job has no runs, and run 0 is the default, so
        a stored spec does not echo `"run": 0` back."""
        data = handler(self)
        if self.run == 0 and isinstance(data, dict):
            data.pop("run", None)
        return data


class UploadRef(_Strict):
    """A file uploaded through `POST /v1/uploads`."""

    upload: ObjectId = Field(description="Id of an upload.")


#: A file named by local path (command line) or by reference (service).
FileRef = str | JobRef | UploadRef
#: A task named by its name, `npz:PATH` (command line), or an uploaded `.npz` (service).
TaskRef = str | UploadRef


def _check_task(value: TaskRef) -> TaskRef:
    if isinstance(value, UploadRef) or value in BUILTIN_TASKS:
        return value
    if value.startswith("npz:"):
        if not value[4:].endswith(".npz"):
            raise ValueError(f"'{value}': a user dataset must be a '.npz' file (npz:PATH.npz)")
        return value
    if value.startswith("images:"):  # quanta_spec.images.IMAGES_PREFIX
        if not value[len("images:"):].lower().endswith(".zip"):
            raise ValueError(f"'{value}': a zip of class folders of images must be a '.zip' "
                             "file (images:PATH.zip)")
        return value
    names = ", ".join(BUILTIN_TASKS)
    raise ValueError(f"unknown task '{value}': expected one of {names}, npz:PATH or "
                     "images:PATH.zip")


def _check_suffix(value: FileRef | None, suffixes: tuple[str, ...], what: str) -> FileRef | None:
    if isinstance(value, str) and not value.endswith(suffixes):
        raise ValueError(f"'{value}': {what} must be a {' or '.join(suffixes)} file")
    return value


class _CommonSpec(_Strict):
    seed: Annotated[int | None, Option(
        "--seed", help="seed for determinism; a value >= 0 seeds every generator, otherwise "
        "no seed")] = Field(
        default=None,
        description="Seed for determinism: a value >= 0 seeds every generator; "
        "negative or absent sets no seed.",
    )
    augment_data: Annotated[bool, Option("--augment_data", help="train on augmented data")] = \
        Field(default=False, description="Train on augmented data.")
    show_only_build: Annotated[bool, Option(
        "--show_only_build", help="only build and compile the models and display their "
        "summaries")] = Field(
        default=False, description="Only build and compile the models and report their summaries."
    )
    precision: Annotated[Literal["float32", "mixed_float16", "mixed_bfloat16"], Option(
        "--precision", help="training precision; mixed policies keep the quantas in float32",
    )] = Field(
        default="float32",
        description="Numeric precision of training. The mixed policies compute in 16 bits "
        "(float16 for GPUs, bfloat16 for recent CPUs and TPUs) and keep the variables, the "
        "quantas and the output layer in float32; they change the results slightly.",
    )
    width_multiplier: Annotated[float, Option(
        "--width_multiplier", help="scale the network's filters and units (1.0: full width)",
    )] = Field(
        default=1.0,
        gt=0,
        le=4,
        description="Scales the number of filters and units of the network (1.0 is the "
        "architecture at its full width; small values give a narrow copy for quick checks).",
    )
    shuffle: Annotated[bool, Option(
        "--shuffle", help="reshuffle the training samples every epoch, in an order fixed by "
        "the seed and the epoch (default: the same order every epoch, as the reference)",
    )] = Field(
        default=False,
        description="Reshuffle the training samples every epoch, in an order fixed by the "
        "run's seed and the epoch (a stream of its own). Off by default, as in the "
        "reference: every epoch sees the same batches in the same order.",
    )
    tensorboard: Annotated[bool, Option(
        "--tensorboard", help="also write TensorBoard event files of every epoch (metrics "
        "and λ_s) under tensorboard/, one run per trained model (needs the tensorboard "
        "package)")] = Field(
        default=False,
        description="Also write TensorBoard event files, one run per trained model under "
        "`tensorboard/` (`target_r_{r}_l_{l}`, `witness_r_{r}_l_{l}`, `source`): per epoch the "
        "training metrics, `lambda_s_K` of each QUANTA layer and, with test_every_epoch, "
        "the test metrics. `tensorboard --logdir` reads them. Needs the tensorboard "
        "package (the `tensorboard` extra).",
    )

    @property
    def seeded(self) -> bool:
        return self.seed is not None and self.seed >= 0


class SourceSpec(_CommonSpec):
    """Training of a source model (the reference's source-training script)."""

    source_task: Annotated[TaskRef, Option("-s", "--source_task",
                                           help=f"task to learn: {TASK_HELP}")] = Field(
        description="Task the source model learns.")
    architecture: Annotated[Architecture, Option(
        "--architecture", help="the network: kes2021 (64-128-512 filters + Dense(2048), the "
        "seed's tool) or compact2025 (64-128-256 + Dense(1024), the reference's 2025 "
        "revision)")] = Field(
        default=DEFAULT_ARCHITECTURE,
        description="The network: kes2021 (64-128-512 filters + Dense(2048), the seed's tool "
        "and the KES 2021 paper) or compact2025 (64-128-256 + Dense(1024), the reference's "
        "2025 revision).",
    )
    nb_of_epochs: Annotated[PositiveInt, Option("--nb_of_epochs", help="training epochs")] = \
        Field(default=1, description="Number of training epochs.")
    nb_of_samples: Annotated[PositiveInt | None, Option(
        "--nb_of_samples", help="keep the first N samples of the training and test splits "
        "(default: all)")] = Field(
        default=None,
        description="Keep the first N samples of the training split and of the test split "
        "(all when absent).",
    )
    train_from_previous_training: Annotated[FileRef | None, Option(
        "--train_from_previous_training", metavar="MODEL.keras",
        help="continue training from this saved model")] = Field(
        default=None, description="A saved source model (.keras) to continue training from."
    )

    _task = field_validator("source_task")(_check_task)

    @field_validator("train_from_previous_training")
    @classmethod
    def _keras_file(cls, value: FileRef | None) -> FileRef | None:
        return _check_suffix(value, (".keras",), "train_from_previous_training")


class TransferSpec(_CommonSpec):
    """A QUANTA transfer experiment (the seed's `quanta.py`)."""

    source_task: Annotated[TaskRef, Option(
        "-s", "--source_task", help=f"task of the source model: {TASK_HELP}")] = Field(
        description="Task of the pre-trained source model.")
    source_weights: Annotated[FileRef | None, Option(
        "-sw", "--source_weights", help="weights of the pre-trained source model, one of the "
        "built-in networks (.h5 file; quanta-client also takes job:ID or upload:ID)")] = Field(
        default=None,
        description="Weights of the pre-trained source model (.h5), one of the built-in "
        "networks. Give this or source_model.")
    source_model: Annotated[FileRef | None, Option(
        "-sm", "--source_model", metavar="MODEL.keras",
        help="the pre-trained source network itself, any Keras functional or Sequential "
        "classifier: a .keras file or keras.applications.NAME (ImageNet weights from the "
        "Keras cache); instead of -sw. Layers are then named: see `quanta layers MODEL`")] = \
        Field(default=None,
              description="The pre-trained source network itself, instead of source_weights: "
              "any Keras 3 functional or Sequential classifier, as a .keras file, or "
              "keras.applications.NAME (its ImageNet weights from the Keras cache). The "
              "target is the same architecture with its head rebuilt for the target's "
              "classes; layer_to_transfer then takes layer names.")
    target_task: Annotated[TaskRef, Option(
        "-t", "--target_task", help=f"task of the target model: {TASK_HELP}")] = Field(
        description="Task of the target model to train.")
    layer_to_transfer: Annotated[LayerRef, Option(
        "-l", "--layer_to_transfer", parse=layer_value,
        help="layer whose transferability is assessed (0-5: Conv2D layers, 6: the Dense "
        "layer; with --source_model, a layer's name); a negative value transfers all layers "
        "at once",
    )] = Field(
        description="Layer whose transferability is assessed: 0-5 are the Conv2D layers, "
        "6 the Dense(2048) (or Dense(1024)) layer; a negative value transfers all seven at "
        "once. With source_model, the name of a layer (GET /v1/uploads/{id}/layers lists "
        "them), or a negative value for every transferable layer at once.",
    )
    architecture: Annotated[Architecture | None, Option(
        "--architecture", help="the network: kes2021 (64-128-512 filters + Dense(2048), the "
        "seed's tool) or compact2025 (64-128-256 + Dense(1024), the reference's 2025 "
        "revision) (default: read off the source weights file, kes2021 when it cannot "
        "tell)")] = Field(
        default=None,
        description="The network of source and target: kes2021 (64-128-512 + Dense(2048), the "
        "seed's tool) or compact2025 (64-128-256 + Dense(1024), the 2025 revision). Absent: "
        "read off the source weights file's shapes (kes2021 when they cannot tell).",
    )
    nb_of_runs: Annotated[PositiveInt, Option("-r", "--nb_of_runs", help="number of runs")] = \
        Field(default=1, description="Number of runs.")
    nb_of_target_epochs: Annotated[PositiveInt, Option(
        "--nb_of_target_epochs", help="epochs to train the target model")] = Field(
        default=1, description="Number of epochs to train the target model."
    )
    nb_of_target_samples: Annotated[PositiveInt | None, Option(
        "--nb_of_target_samples", help="keep the first N samples of the training and test "
        "splits (default: all)")] = Field(
        default=None,
        description="Keep the first N samples of the training and test splits; also the "
        "number of test samples the source is evaluated on (all when absent).",
    )
    train_from_previous_training: Annotated[FileRef | None, Option(
        "--train_from_previous_training", metavar="MODEL.keras",
        help="continue training from this saved model")] = Field(
        default=None, description="A saved target model (.keras) to continue training from."
    )
    witness: Annotated[bool, Option(
        "--witness", help="also train a witness (the target architecture from scratch, no "
        "transfer) in each run and report the transfer gain")] = Field(
        default=False,
        description="Also train a witness in each run: the target architecture from scratch, "
        "on the same data, batches and epochs, without transfer, its weights drawn from a "
        "stream of its own. Its test metrics give the transfer gain (target accuracy minus "
        "witness accuracy).",
    )
    source_inference_mode: Annotated[bool, Option(
        "--source_inference_mode", help="run the frozen source in inference mode (Dropout "
        "off) and compute its activations once, reused by every epoch: faster, not the "
        "reference's behaviour")] = Field(
        default=False,
        description="Run the frozen source in inference mode (its Dropout off) and compute "
        "its activations at the transferred layers once per training sample, reused by "
        "every epoch and run (within the worker's memory budget for them; beyond it they "
        "are computed on the fly, still in inference mode). Faster, but not the reference's "
        "behaviour: there the source's Dropout layers stay active while the target trains. "
        "With a source_model, the cut is run in inference mode on the fly (its activations "
        "are not precomputed).",
    )
    quanta_learning_rate_multiplier: Annotated[float, Option(
        "--quanta_lr_multiplier", "--quanta_learning_rate_multiplier",
        deprecated=("--quanta_gradient_multiplier",),
        help="multiply the learning rate of the quanta weights only, so they move faster "
        "than the network's")] = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Multiplies the learning rate of the quanta weights only, so that the "
        "quantas move faster (or slower) than the network's weights; 1.0 leaves it as the "
        "network's. Replaces quanta_gradient_multiplier (still accepted, deprecated): under "
        "Adam a factor on the gradient leaves the update unchanged.",
    )
    test_every_epoch: Annotated[bool, Option(
        "--test_every_epoch", help="evaluate the target on the test split after every "
        "epoch (the paper's protocol)")] = Field(
        default=False,
        description="Evaluate the target on the test split after every epoch (the paper's "
        "protocol), written to testing_metrics_of_target_per_epoch_r_{r}_l_{l}.jsonl.",
    )
    preprocess: Annotated[str | None, Option(
        "--preprocess", help="with --source_model: how pixels (0-255) are prepared after "
        "resizing: none, rescale (/255) or keras.applications.MODULE.preprocess_input "
        "(default: the application's own, none for a .keras file)")] = Field(
        default=None,
        description="With source_model: how the images' pixels (0-255, after resizing) are "
        "prepared for the network: none (as they are; the model's own layers, such as "
        "Rescaling, do the rest), rescale (divided by 255), or "
        "keras.applications.MODULE.preprocess_input. Absent: the keras.applications "
        "network's own function, none for a .keras file. Results record the one used.",
    )
    resize_method: Annotated[ResizeMethod, Option(
        "--resize_method", help="with --source_model: how images are resized to the "
        "network's input")] = Field(
        default=DEFAULT_RESIZE_METHOD,
        description="With source_model: how images of another size are resized to the "
        "network's input (the built-in networks take the task's size as it is).",
    )
    init_from_source: Annotated[bool, Option(
        "--init_from_source", help="with --source_model: start the target from the "
        "source's weights (fine-tuning) instead of from scratch as in the paper")] = Field(
        default=False,
        description="With source_model: the target starts from the source's weights (all "
        "but the rebuilt head), as fine-tuning studies ask, instead of from new weights as "
        "in the paper.",
    )

    _tasks = field_validator("source_task", "target_task")(_check_task)

    @model_validator(mode="before")
    @classmethod
    def _deprecated_gradient_multiplier(cls, data: Any) -> Any:
        """`quanta_gradient_multiplier` (deprecated) is read as the learning-rate factor, so
        that specs stored before the rename still load."""
        if not isinstance(data, dict) or "quanta_gradient_multiplier" not in data:
            return data
        data = dict(data)
        old = data.pop("quanta_gradient_multiplier")
        new = data.setdefault("quanta_learning_rate_multiplier", old)
        if new != old:
            raise ValueError("give quanta_learning_rate_multiplier only (quanta_gradient_"
                             "multiplier is its deprecated name)")
        return data

    @field_validator("source_weights")
    @classmethod
    def _h5_file(cls, value: FileRef | None) -> FileRef | None:
        return _check_suffix(value, (".h5",), "source_weights")

    @field_validator("source_model")
    @classmethod
    def _model_file(cls, value: FileRef | None) -> FileRef | None:
        return check_source_model(value) if isinstance(value, str) else value

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, value: str | None) -> str | None:
        return None if value is None else check_preprocess(value)

    _layer = field_validator("layer_to_transfer", mode="before")(layer_value)

    @field_validator("layer_to_transfer")
    @classmethod
    def _layer_of_the_network(cls, value: int | str | None, info: ValidationInfo
                              ) -> int | str | None:
        """Numbers 0-6 for the built-in networks, names for a source_model (a negative
        number: all at once, for both): said here so that the error names the field."""
        own = info.data.get("source_model") is not None
        if isinstance(value, str) and not own:
            raise ValueError(f"layer '{value}': the built-in networks' layers are numbered "
                             "0-6; names are for a source_model")
        if isinstance(value, int) and value > NB_TRANSFERABLE_LAYERS - 1 and not own:
            raise ValueError(f"Input should be less than or equal to "
                             f"{NB_TRANSFERABLE_LAYERS - 1} (the built-in networks' layers "
                             "are 0-6; negative: all at once)")
        if isinstance(value, int) and value >= 0 and own:
            raise ValueError(f"layer {value}: a source_model's layers are named (list them "
                             "with `quanta layers MODEL`); a negative value takes them all")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TransferSpec:
        """A built-in network's weights, or a network of the user's: never both."""
        if (self.source_weights is None) == (self.source_model is None):
            raise ValueError("give source_weights (a built-in network's weights) or "
                             "source_model (your own network), one of them")
        _check_network_options(self)
        return self

    @property
    def own_network(self) -> bool:
        """The source is the user's network (`source_model`), not a built-in one."""
        return self.source_model is not None

    @field_validator("train_from_previous_training")
    @classmethod
    def _keras_file(cls, value: FileRef | None) -> FileRef | None:
        return _check_suffix(value, (".keras",), "train_from_previous_training")

    @property
    def transferred_layers(self) -> tuple[int | str, ...]:
        """The layers that get a QUANTA layer: numbers; a name with source_model (every
        transferable layer, for a negative number there, is known from the network)."""
        if isinstance(self.layer_to_transfer, str):
            return (self.layer_to_transfer,)
        if self.layer_to_transfer < 0:
            return () if self.own_network else tuple(range(NB_TRANSFERABLE_LAYERS))
        return (self.layer_to_transfer,)

    @property
    def layer_label(self) -> str:
        return layer_label(self.layer_to_transfer)


#: `keras.applications.NAME` in a remote spec: a name, never a path.
ApplicationName = Annotated[str, Field(pattern=r"^keras\.applications\.[A-Z][A-Za-z0-9]{1,63}$")]


def _no_server_path(value: Any) -> Any:
    """One clear error for a file named by path in a remote spec, instead of one error per
    member of the reference union."""
    if isinstance(value, str) and not value.startswith(APPLICATION_PREFIX):
        raise ValueError(f"'{value}' is a path; name files by {{\"job\": ID}} or "
                         "{\"upload\": ID} (upload your own with POST /v1/uploads)")
    return value


def _known_task(value: Any) -> Any:
    """A remote task is a built-in name or an upload: one error naming both otherwise."""
    if isinstance(value, str) and value not in BUILTIN_TASKS:
        raise ValueError(f"unknown task '{value}': expected one of {', '.join(BUILTIN_TASKS)}"
                         ", or {\"upload\": ID} for an uploaded dataset (an .npz, or a zip "
                         "of class folders of images)")
    return value


class RemoteSourceSpec(SourceSpec):
    """A `SourceSpec` as the API accepts it: no server paths."""

    source_task: BuiltinTask | UploadRef = Field(
        description="A task name, or an uploaded .npz dataset as {\"upload\": ID}."
    )
    train_from_previous_training: JobRef | UploadRef | None = Field(
        default=None,
        description="A finished source job ({\"job\": ID}) or an uploaded .keras model.",
    )

    _refs = field_validator("train_from_previous_training", mode="before")(_no_server_path)
    _remote_task = field_validator("source_task", mode="before")(_known_task)


class RemoteTransferSpec(TransferSpec):
    """A `TransferSpec` as the API accepts it: no server paths."""

    source_task: BuiltinTask | UploadRef = Field(
        description="A task name, or an uploaded .npz dataset as {\"upload\": ID}."
    )
    target_task: BuiltinTask | UploadRef = Field(
        description="A task name, or an uploaded .npz dataset as {\"upload\": ID}."
    )
    source_weights: JobRef | UploadRef | None = Field(
        default=None,
        description="A finished source job ({\"job\": ID}) or an uploaded .weights.h5 file "
        "(a built-in network's weights). Give this or source_model.",
    )
    source_model: JobRef | UploadRef | ApplicationName | None = Field(
        default=None,
        description="Your own source network: an uploaded .keras model ({\"upload\": ID}; "
        "GET /v1/uploads/{id}/layers lists its layers), a finished source job's model "
        "({\"job\": ID}), or keras.applications.NAME (ImageNet weights from the workers' "
        "Keras cache). Give this or source_weights.",
    )
    train_from_previous_training: JobRef | UploadRef | None = Field(
        default=None,
        description="A run of a finished transfer job ({\"job\": ID, \"run\": R}) or an "
        "uploaded .keras model.",
    )

    _refs = field_validator("source_weights", "source_model", "train_from_previous_training",
                            mode="before")(_no_server_path)
    _remote_tasks = field_validator("source_task", "target_task", mode="before")(_known_task)


StudyLayer = Annotated[int, Field(ge=-1, le=NB_TRANSFERABLE_LAYERS - 1)] | Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]


#: The settings each study protocol fills in (fields given explicitly win).
PROTOCOLS: dict[str, dict[str, Any]] = {
    # The KES 2021 paper: every layer, 30 runs of 60 epochs with augmentation, the seed's
    # network, the target tested after every epoch.
    "kes2021": {
        "layers": "all",
        "nb_of_runs": 30,
        "nb_of_target_epochs": 60,
        "augment_data": True,
        "architecture": "kes2021",
        "test_every_epoch": True,
    },
}


class RemoteStudySpec(RemoteTransferSpec):
    """The paper's protocol as one request: `nb_of_runs` runs of each layer in `layers`.

    The service runs it as one child transfer job per (layer, run), so that the runs
    spread over every worker; `child_spec` is the spec of each child. It is a transfer
    spec without `layer_to_transfer` (each child has its own) and with `layers`.
    """

    protocol: Literal["kes2021"] | None = Field(
        default=None,
        description="A preset of settings: kes2021 is the paper's protocol (layers 0-6, 30 "
        "runs, 60 epochs, augmentation, the kes2021 network, test every epoch). Fields "
        "given explicitly override it.",
    )
    layer_to_transfer: SkipJsonSchema[int | None] = Field(default=None, exclude=True)
    layers: list[StudyLayer] | Literal["all"] = Field(
        description="Layers to measure: numbers 0-6 and/or -1 (all seven at once), or "
        "\"all\" for 0-6. With source_model, layer names (and/or -1), or \"all\" for "
        "every transferable layer of an uploaded model (at most MAX_LAYERS_AT_ONCE).",
    )
    include_all_at_once: bool = Field(
        default=False, description="Also measure every layer transferred at once (-1): the "
        "seven of a built-in network, every transferable layer of a source_model (at most "
        "64)."
    )
    baselines: bool = Field(
        default=False,
        description="Also compute the baseline transferability scores of the frozen source "
        "on the target training samples (LogME, H-score, TransRate, GBC per layer; LEEP and "
        "NCE for the source) and their rank correlations with λ_s across layers.",
    )
    until: UntilRule | None = Field(
        default=None,
        description="Stop each layer when it is known well enough: start min_runs runs per "
        "layer, add runs as they end until the 95% CI half-width of the layer's final λ_s "
        "is at most ci_halfwidth or max_runs runs were started. Replaces nb_of_runs.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_protocol(cls, data: Any) -> Any:
        protocol = data.get("protocol") if isinstance(data, dict) else None
        if isinstance(protocol, str) and protocol in PROTOCOLS:  # else the field says why
            preset = PROTOCOLS[data["protocol"]]
            if data.get("until") is not None:  # `until` sets the runs, not the preset
                preset = {k: v for k, v in preset.items() if k != "nb_of_runs"}
            data = {**preset, **data}
        return data

    @field_validator("layer_to_transfer")
    @classmethod
    def _no_single_layer(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("a study takes 'layers' (a list, or \"all\"), not "
                             "'layer_to_transfer'")
        return value

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one layer (0-6, or -1 for all at once)")
            if len(set(value)) != len(value):
                raise ValueError(f"layers {value} repeat a layer")
            if len(value) > MAX_LAYERS_AT_ONCE:
                raise ValueError(f"{len(value)} layers; a study measures at most "
                                 f"{MAX_LAYERS_AT_ONCE}")
        return value

    @model_validator(mode="after")
    def _layers_of_the_network(self) -> RemoteStudySpec:
        if isinstance(self.layers, list):
            for layer in self.layers:
                if isinstance(layer, int) and layer == -1:
                    continue
                if self.own_network != isinstance(layer, str):
                    raise ValueError(f"layer {layer!r}: " + (
                        "a source_model's layers are named" if self.own_network
                        else "the built-in networks' layers are numbered 0-6"))
        return self

    @field_validator("train_from_previous_training")
    @classmethod
    def _no_previous_training(cls, value: object) -> None:
        if value is not None:
            raise ValueError("not available in a study: each layer needs a target of its "
                             "own; submit transfer jobs instead")
        return None

    @field_validator("show_only_build")
    @classmethod
    def _trains_something(cls, value: bool) -> bool:
        if value:
            raise ValueError("a study of show_only_build has nothing to measure; submit a "
                             "transfer job instead")
        return value

    @model_validator(mode="after")
    def _not_too_big(self) -> RemoteStudySpec:
        if self.until is not None and self.nb_of_runs != 1:  # 1: left out (the default)
            raise ValueError("give nb_of_runs or until, not both: with until, each layer "
                             "runs until.min_runs to until.max_runs times")
        if self.nb_of_jobs > MAX_STUDY_JOBS:
            runs = "until.max_runs" if self.until is not None else "runs"
            raise ValueError(f"{len(self.study_layers)} layers x {self.max_runs} {runs} make "
                             f"{self.nb_of_jobs} jobs; a study may have {MAX_STUDY_JOBS} at most")
        return self

    @property
    def study_layers(self) -> tuple[int | str, ...]:
        """The layers measured, in order; -1 (all at once) last. A source_model's layers
        by name, in the order given (the service puts them in graph order)."""
        listed = () if self.layers == "all" else tuple(self.layers)
        at_once = (-1,) if self.include_all_at_once or -1 in listed else ()
        if self.own_network:
            return (*[k for k in listed if not isinstance(k, int)], *at_once)
        chosen = range(NB_TRANSFERABLE_LAYERS) if self.layers == "all" else self.layers
        layers = sorted(set(chosen) | set(at_once))
        return (*[k for k in layers if k >= 0], *[k for k in layers if k < 0])

    @property
    def max_runs(self) -> int:
        """Most runs of one layer: `nb_of_runs`, or `until.max_runs`."""
        return self.until.max_runs if self.until is not None else self.nb_of_runs

    @property
    def first_runs(self) -> int:
        """Runs of each layer created with the study (`until` adds the others later)."""
        return self.until.min_runs if self.until is not None else self.nb_of_runs

    @property
    def nb_of_jobs(self) -> int:
        """Most child jobs the study may have."""
        return len(self.study_layers) * self.max_runs

    @property
    def transferred_layers(self) -> tuple[int | str, ...]:
        """Every layer that gets a QUANTA layer in some child (a source_model's named
        ones; its -1 child takes every transferable layer, known from the network)."""
        if self.own_network:
            return tuple(k for k in self.study_layers if isinstance(k, str))
        if -1 in self.study_layers:
            return tuple(range(NB_TRANSFERABLE_LAYERS))
        return self.study_layers

    @property
    def layer_label(self) -> str:
        raise AttributeError("a study has several layers; see study_layers")

    def child_seed(self, run: int) -> int | None:
        """Run `run` is seeded with `seed + run`, as the library seeds run r of a multi-run
        transfer: a child (layer, r) with one run reproduces run r of `quanta -r N`."""
        return run_seed(self.seed, run) if self.seeded else self.seed

    @property
    def witness_layer(self) -> int | None:
        """The layer whose jobs train the study's witnesses (its first), or None.

        A witness depends on the run (its seed), never on the layer: the same network
        from scratch on the same data. So each run's witness is trained once, by that
        layer's job, and every layer of the run is compared with it."""
        return self.study_layers[0] if self.witness else None

    def child_spec(self, layer: int, run: int) -> RemoteTransferSpec:
        """The transfer job that measures `layer` in run `run` of the study; only the
        witness layer's job trains the run's witness (`witness_layer`)."""
        values = self.model_dump(exclude={"layers", "include_all_at_once", "protocol",
                                          "baselines", "until"})
        values.update(layer_to_transfer=layer, nb_of_runs=1, seed=self.child_seed(run),
                      witness=layer == self.witness_layer)
        return RemoteTransferSpec.model_validate(values)
