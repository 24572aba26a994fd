"""SQLAlchemy models: jobs, uploads and the artifacts a job produced.

The database is the source of truth for a job's state (Celery carries only the job
id), so every field a client can see lives here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement


def new_id() -> str:
    """A random id (uuid4 hex): unguessable and valid in `quanta_spec`'s ObjectId pattern."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class db_now(FunctionElement[datetime]):
    """The database server's current time, in SQL: what heartbeats stamp and staleness is
    judged by, so that hosts whose clocks disagree still agree on which worker is late.

    `db_now(seconds)` is that time minus `seconds`. SQLite gets the text form SQLAlchemy
    stores its datetimes in (so they compare as text), PostgreSQL `now()`.
    """

    type = UTCDateTime()
    inherit_cache = False  # `seconds_ago` is written into the SQL: no statement cache

    def __init__(self, seconds_ago: float = 0.0) -> None:
        self.seconds_ago = float(seconds_ago)
        super().__init__()


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', '{-element.seconds_ago:+.6f} seconds')"


@compiles(db_now)
def _db_now_default(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    if not element.seconds_ago:
        return "now()" if compiler.dialect.name == "postgresql" else "CURRENT_TIMESTAMP"
    return f"(CURRENT_TIMESTAMP - INTERVAL '{element.seconds_ago:.6f} seconds')"


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One experiment: a source training or a transfer, with its state and progress."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_kind_created_at", "kind", "created_at"),
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        Index("ix_jobs_parent_id", "parent_id"),
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Starts a worker stopping on purpose handed back (they do not count as failures).
    handbacks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: Name of the API token that created the job ("" when the service runs without tokens).
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    #: The client's `Idempotency-Key`: a retried POST returns this job, never a second one.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: The study this job is a child of.
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE", name="fk_jobs_parent_id"), nullable=True
    )
    #: For a study's child: its run number in the study (the `r` of the study's file names;
    #: the child itself has one run, seeded with the study's seed + r).
    study_run: Mapped[int | None] = mapped_column(Integer, nullable=True)

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="Artifact.path"
    )

    @property
    def failed_attempts(self) -> int:
        """The starts that count against `max_attempts`: all but the hand-backs."""
        return self.attempts - (self.handbacks or 0)


class Upload(Base):
    """A file a client uploaded: source weights, a saved model or a dataset."""

    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_created_at", "created_at"),
        UniqueConstraint("owner", "idempotency_key", name="uq_uploads_owner_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text, doc="Relative to UPLOADS_DIR.")
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)


class UploadHold(Base):
    """Bytes an upload still streaming holds against its owner's storage quota
    (`quanta_jobs.upload_holds`): concurrent uploads cannot all count the same free room."""

    __tablename__ = "upload_holds"
    __table_args__ = (Index("ix_upload_holds_owner", "owner"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(255), doc="`pid@host` of the API process.")
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token stored as its SHA-256 (the token itself is shown once, at creation)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Artifact(Base):
    """A file a job wrote, relative to its output folder, with its size and digest."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "path", name="uq_artifacts_job_id_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))

    job: Mapped[Job] = relationship(back_populates="artifacts")


class JobEvent(Base):
    """One entry of a job's live progress (a status change or a finished epoch).

    Events are numbered by `seq` within their root (the study for a study's children,
    else the job itself), in commit order: a stream that reads `seq > last` never skips
    one, and `seq` is the `id:` of a Server-Sent Event, so a client can resume.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("root_id", "seq", name="uq_job_events_root_id_seq"),
        Index("ix_job_events_job_id_seq", "job_id", "seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    root_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkerBeat(Base):
    """A worker process, stamped every heartbeat while it lives (`quanta_jobs.workers`)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
