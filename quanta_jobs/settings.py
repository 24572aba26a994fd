"""Service configuration, read from `QUANTA_*` environment variables.

One `Settings` object is shared by the API and the workers so that both agree on
where the database, the broker and the files are. Relative paths (including those
inside SQLite URLs) are resolved against the current directory once, at load time,
so that a worker started from another directory still finds the same files.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from quanta_jobs.store import parse_store_url
from quanta_spec.images import MAX_IMAGE_FILES, MAX_IMAGE_PIXELS

GiB = 1024**3


def _absolute_sqlite(url: str) -> str:
    """Make the file path of a SQLite URL absolute (`sqlite:///./x.db` -> `sqlite:////cwd/x.db`)."""
    for prefix in ("sqla+sqlite:///", "sqlalchemy+sqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix):]
            path, sep, query = rest.partition("?")
            if not path or path == ":memory:" or path.startswith("/"):
                return url
            return f"{prefix}{Path(path).resolve()}{sep}{query}"
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (with or without the kombu `sqla+` prefix)."""
    for prefix in ("sqla+sqlite:///", "sqlalchemy+sqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            path = url[len(prefix):].partition("?")[0]
            return Path(path) if path and path != ":memory:" else None
    return None


class Settings(BaseSettings):
    """Where things are and how big they may be; every field is `QUANTA_<NAME>` in the env."""

    model_config = SettingsConfigDict(env_prefix="QUANTA_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./var/quanta.db",
        description="SQLAlchemy URL of the job database (SQLite or postgresql+psycopg).",
    )
    broker_url: str = Field(
        default="sqla+sqlite:///./var/broker.db",
        description="Celery broker: redis://HOST:6379/0, or kombu's SQLAlchemy transport.",
    )
    queue: str = Field(default="quanta", description="Name of the Celery queue of the jobs.")
    artifacts_dir: Path = Field(default=Path("./var/artifacts"))
    uploads_dir: Path | None = Field(default=None, description="Default: ARTIFACTS_DIR/../uploads.")
    data_dir: Path | None = Field(default=None, description="Dataset cache; default: quanta's.")
    max_upload_bytes: int = Field(default=GiB, gt=0)
    migrate_on_start: bool = Field(
        default=True, description="Apply the database migrations when the API starts."
    )
    requeue_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="How often the API re-sends queued jobs the broker never received "
        "(0 disables the loop).",
    )
    heartbeat_s: float = Field(default=15.0, gt=0, description="Worker heartbeat period.")
    stale_after_s: float = Field(
        default=300.0,
        gt=0,
        description="A running job whose worker has not beaten for this long is taken over "
        "when its message is delivered again.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts before a job is failed. A start that a worker "
        "stopping on purpose handed back (Ctrl-C, SIGTERM, a deploy) does not count.")
    ready_min_workers: int = Field(
        default=0, ge=0, description="Live workers /readyz requires before it says ready. "
        "quanta-serve sets 1 when it starts workers itself (unless this is set); an API "
        "deployed apart from its workers keeps 0.")
    checkpoint_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="Least time between two checkpoints of a running job (0: after every "
        "epoch). A worker that dies loses at most this much training.",
    )
    shutdown_wait_s: float = Field(
        default=45.0, ge=0,
        description="A worker asked to stop (SIGTERM, Ctrl-C, a deploy) lets the epoch in "
        "progress run for up to this long, so that it ends and is saved before the job is "
        "handed back: a planned restart then loses no finished training (0: stop at the next "
        "batch, losing the epoch in progress). Keep it below the stop timeout the worker "
        "gets (compose's stop_grace_period, quanta-serve --stop-timeout).",
    )
    worker_name: str = Field(
        default="", max_length=200,
        description="The worker's name, NAME or NAME@HOST (@ and this machine's host name "
        "are added when missing); `quanta-worker --name` wins. Default: gpuN with --gpu, "
        "else worker-PID. A worker restarted under its name takes back the jobs it was "
        "running; `quanta-worker --check` reads the same name.",
    )
    task_events: bool | None = Field(
        default=None,
        description="Workers send Celery's task events (as `celery worker -E`), for Flower "
        "and `celery events`. Unset: on where the broker broadcasts them (Redis, RabbitMQ), "
        "off on the embedded SQL broker, which cannot. A few small messages per job.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="An MLflow tracking server (e.g. http://mlflow:5000): each job that "
        "succeeds becomes an MLflow run (its spec as params, per-epoch metrics and λ_s, its "
        "JSONL files and plots), a study a parent run with its jobs nested. Needs the "
        "mlflow extra on the workers. Unset: no export.",
    )
    mlflow_experiment: str = Field(
        default="quanta", min_length=1, max_length=200,
        description="The MLflow experiment the runs go to.",
    )
    mlflow_timeout_s: float = Field(
        default=20.0, gt=0, le=600,
        description="Longest a job waits for its MLflow export; a server down or slower "
        "costs the job this much at most and a warning in the worker's log (the export is "
        "dropped, the job succeeds).",
    )
    tensorboard: bool = Field(
        default=False,
        description="Jobs write TensorBoard event files unless their spec says "
        "\"tensorboard\": false (the spec's default otherwise: off). Needs the tensorboard "
        "extra on the workers.",
    )
    traced_models: int = Field(
        default=10,
        ge=0,
        description="Compiled models a worker keeps to reuse across runs, one per network "
        "shape (their memory: docs/performance.md); 0 builds and traces a model for every run.",
    )
    cancel_poll_s: float = Field(
        default=1.0, ge=0, description="Least time between two database reads of the cancel flag."
    )
    api_tokens: str = Field(
        default="",
        description="Bearer tokens, comma-separated `name:token` or `name:token:admin` entries "
        "(more can be stored hashed in the database: `quanta-serve token create`).",
    )
    max_concurrent_checks: int = Field(
        default=2, ge=1,
        description="Uploads whose content the API checks at once (HDF5, zip and .npz "
        "parsing); the others wait, so that costly uploads never starve other requests.",
    )
    allowed_hosts: str = Field(
        default="127.0.0.1,localhost,::1",
        description="Host names the API answers to, comma-separated (`*`: any); a request "
        "naming another host gets 421, so a web page that rebinds its own name to this "
        "machine cannot drive the service. quanta-serve adds the address its --host names, "
        "and uses `*` on every interface (0.0.0.0, ::), where tokens are required anyway.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Seconds a connection has to send a request's line and headers, from "
        "its opening or its previous response; a slower one is closed (bodies, such as "
        "uploads, are not timed). quanta-serve only.",
    )
    max_connections: int = Field(
        default=1000, ge=0,
        description="Connections the API holds open at once; one more gets 503 and is "
        "closed (0: no ceiling). quanta-serve only.",
    )
    max_json_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest JSON request body; larger ones get 413."
    )
    max_dataset_bytes: int = Field(
        default=4 * GiB, gt=0,
        description="Bytes the arrays of an uploaded .npz may declare in all, or the images "
        "of an image zip take decoded (checked from their headers at upload and again before "
        "a worker loads them); more is a 422.",
    )
    dataset_cache_bytes: int = Field(
        default=GiB, ge=0,
        description="Bytes of decoded datasets a worker keeps between jobs (the least "
        "recently used go first; 0: none). A larger dataset is decoded for its job and "
        "freed after it; what one job may decode is bounded by QUANTA_MAX_DATASET_BYTES.",
    )
    max_image_side: int = Field(
        default=128, gt=0,
        description="Largest image height or width of an uploaded dataset (the networks' "
        "Dense layer grows with the image area); larger is a 422.",
    )
    max_image_files: int = Field(
        default=MAX_IMAGE_FILES, gt=0,
        description="Members an uploaded zip of class folders of images may hold (its "
        "directory is counted before anything is read); more is a 422.",
    )
    max_image_pixels: int = Field(
        default=MAX_IMAGE_PIXELS, gt=0,
        description="Pixels (width x height) one image of an uploaded image zip may declare "
        "in its header (4096 x 4096); more is a 422, before any image is decoded.",
    )
    max_model_params: int = Field(
        default=100_000_000, gt=0,
        description="Parameters the layers of an uploaded .keras model may declare in its "
        "config (units, filters, kernel sizes); more is a 422.",
    )
    max_compare_studies: int = Field(
        default=10, ge=2,
        description="Most studies one GET /v1/studies/compare (or compare.png) puts side by "
        "side; more is a 422.",
    )
    max_queued_per_owner: int = Field(
        default=2000, ge=0,
        description="Queued jobs a token may have at once, a study's jobs included "
        "(0: no cap); 429.",
    )
    max_job_work: int = Field(
        default=1_000_000_000, ge=0,
        description="Runs x epochs x training samples one job may plan (a witness doubles "
        "it; 0: no limit); more is a 422 naming the epochs field.",
    )
    max_study_work: int = Field(
        default=20_000_000_000, ge=0,
        description="The same for a whole study, over all its jobs (0: no limit).",
    )
    max_stored_bytes_per_owner: int = Field(
        default=100 * GiB, ge=0,
        description="Bytes of uploads and job files a token may keep (0: no quota); past "
        "it uploads and submissions get 507.",
    )
    upload_hold_s: float = Field(
        default=600.0, gt=0,
        description="An upload counts against its owner's storage quota while it streams; a "
        "hold not refreshed for this long (the upload stalled, or the API process receiving "
        "it died on another host) stops counting, and the upload is checked again at its "
        "end. The API that restarts on the same host frees its dead processes' holds and "
        "partial files at once.",
    )
    max_streams_per_token: int = Field(
        default=8, ge=0,
        description="Event streams (GET /v1/jobs/{id}/events) one token may hold open "
        "(0: no cap); one more is a 429.",
    )
    max_streams: int = Field(
        default=256, ge=0,
        description="Event streams the API holds open in all (0: no cap); one more is a 429.",
    )
    stream_auth_recheck_s: float = Field(
        default=5.0, gt=0,
        description="How often an open event stream checks its token again; a revoked "
        "token's streams end within this long.",
    )
    max_job_seconds: float = Field(
        default=86_400, ge=0,
        description="Wall time an attempt of a job may run before it fails (24 h; 0: no "
        "limit).",
    )
    checkpoints_dir: Path | None = Field(
        default=None,
        description="Per-epoch checkpoints of running jobs (default: "
        "ARTIFACTS_DIR/../checkpoints), shared by the workers so that any can resume a job.",
    )
    db_retry_s: float = Field(
        default=300.0, ge=0,
        description="How long a worker retries recording a finished job while the database "
        "is unreachable (the files stay on disk meanwhile).",
    )
    heartbeat_loss_s: float | None = Field(
        default=None, gt=0,
        description="A worker that could not stamp its job's heartbeat for this long stops "
        "the job (between batches) and writes no outcome, so that it is stopped before the "
        "sweeper hands the job to another worker (default: 0.4 x STALE_AFTER_S; must be "
        "less than STALE_AFTER_S).",
    )

    @model_validator(mode="after")
    def _heartbeat_loss_below_staleness(self) -> Settings:
        if self.heartbeat_loss_s is not None and self.heartbeat_loss_s >= self.stale_after_s:
            raise ValueError(f"QUANTA_HEARTBEAT_LOSS_S ({self.heartbeat_loss_s:g}) must be "
                             f"less than QUANTA_STALE_AFTER_S ({self.stale_after_s:g})")
        return self

    @property
    def heartbeat_loss_bound_s(self) -> float:
        """`heartbeat_loss_s`, or its default from `stale_after_s`."""
        return self.heartbeat_loss_s or 0.4 * self.stale_after_s

    store_url: str | None = Field(
        default=None,
        description="Where artifacts, uploads, checkpoints and datasets are kept: absent, "
        "the local folders above; s3://bucket/prefix, an S3-compatible bucket (credentials "
        "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), so that hosts share only a network.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="The S3 server when it is not AWS (MinIO, Ceph): http://host:9000.",
    )
    s3_part_bytes: int = Field(
        default=16 * 1024 * 1024, ge=5 * 1024 * 1024,
        description="Part size of multipart uploads to the bucket (S3's least is 5 MiB); a "
        "transfer holds about four parts in memory.",
    )
    store_cache_dir: Path | None = Field(
        default=None,
        description="A worker's local copies of what it fetched from the bucket (default: "
        "ARTIFACTS_DIR/../cache); unused without QUANTA_STORE_URL.",
    )

    store_cache_max_bytes: int = Field(
        default=50 * 1024**3, ge=0,
        description="Most bytes a host keeps in each area of its cache of the bucket (the "
        "least recently used copies go first; 0: no limit); unused without QUANTA_STORE_URL.",
    )

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return value or None  # an empty variable (compose's default) means AWS itself

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parse_store_url(value)
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.database_url = _absolute_sqlite(self.database_url)
        self.broker_url = _absolute_sqlite(self.broker_url)
        self.artifacts_dir = self.artifacts_dir.expanduser().resolve()
        if self.uploads_dir is None:
            self.uploads_dir = self.artifacts_dir.parent / "uploads"
        self.uploads_dir = self.uploads_dir.expanduser().resolve()
        if self.checkpoints_dir is None:
            self.checkpoints_dir = self.artifacts_dir.parent / "checkpoints"
        self.checkpoints_dir = self.checkpoints_dir.expanduser().resolve()
        if self.store_cache_dir is None:
            self.store_cache_dir = self.artifacts_dir.parent / "cache"
        self.store_cache_dir = self.store_cache_dir.expanduser().resolve()
        if self.data_dir is not None:
            self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @property
    def uploads_path(self) -> Path:
        """`uploads_dir`, never None after validation (typed for callers)."""
        assert self.uploads_dir is not None
        return self.uploads_dir

    @property
    def checkpoints_path(self) -> Path:
        """`checkpoints_dir`, never None after validation (typed for callers)."""
        assert self.checkpoints_dir is not None
        return self.checkpoints_dir

    @property
    def store_cache_path(self) -> Path:
        """`store_cache_dir`, never None after validation (typed for callers)."""
        assert self.store_cache_dir is not None
        return self.store_cache_dir

    def ensure_dirs(self) -> None:
        """Create the folders the service writes to, including SQLite files' folders."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_path.mkdir(parents=True, exist_ok=True)
        for url in (self.database_url, self.broker_url):
            path = sqlite_file(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
