"""One way to keep and fetch the service's files: a local folder or an S3-compatible bucket.

Job outputs, uploads, checkpoints and datasets are named by *keys*: relative POSIX paths
such as `{job id}/summary.json`. The API and the workers go through an `ArtifactStore`
instead of joining paths to a shared folder, so that a worker on another host, with
nothing shared but the network, reads and writes the same files as the API.

- `LocalStore(root)` keeps a key at `root/key`: the folders and their layout are the ones
  the service has always used, so a single machine needs no server.
- `S3Store(bucket, prefix)` keeps it at `s3://bucket/prefix/key` through boto3, which
  reads the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables; an
  endpoint URL points it at MinIO, Ceph or any other S3-protocol server.

Every `put` hashes what it stores as it streams (SHA-256, as the artifact index records
it); the S3 backend keeps the digest in the object's metadata, so that a reader checks
what it fetched without reading the object twice. Reads stream, optionally from a byte
range (HTTP `Range`), so no file is ever held in memory. `StoreCache` gives a worker a
local copy of a key, fetched once and verified before each reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, Protocol

from quanta_spec.files import PARTIAL, replacing
from quanta_spec.tasks import default_data_dir

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MiB = 1024 * 1024
#: S3 copies an object of up to 5 GiB in one request; larger ones go in parts.
COPY_IN_ONE_BYTES = 5 * 1024 * MiB
#: The name of the SHA-256 in an S3 object's user metadata (header `x-amz-meta-sha256`).
SHA256_META = "sha256"
#: The folders (local) or key prefixes (bucket) of the service's files.
Area = Literal["artifacts", "uploads", "checkpoints", "datasets"]
AREAS: tuple[Area, ...] = ("artifacts", "uploads", "checkpoints", "datasets")

Source = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]


class StoreError(Exception):
    """A store operation that cannot be done; the subclass says why."""


class InvalidKey(StoreError, ValueError):
    """A key or prefix that could name something outside the store."""


class KeyNotFound(StoreError, FileNotFoundError):
    """No object under that key."""


class InvalidRange(StoreError, ValueError):
    """A byte range that starts past the end of the object (HTTP 416)."""

    def __init__(self, key: str, start: int, size: int) -> None:
        super().__init__(f"range start {start} is past the end of '{key}' ({size} bytes)")
        self.size = size


class IntegrityError(StoreError):
    """What was fetched does not have the SHA-256 it was stored with."""


class Stored(NamedTuple):
    """What `put` and `fetch_to` moved: its size and SHA-256 (hex)."""

    size: int
    sha256: str


class ObjectInfo(NamedTuple):
    """One object of a listing; `sha256` is None when not asked for or not recorded."""

    key: str
    size: int
    sha256: str | None = None


def check_key(key: str) -> str:
    """`key` if it is a relative POSIX path with no empty, `.` or `..` part, no backslash,
    NUL or other control character; else InvalidKey (so no key escapes the store)."""
    if (not isinstance(key, str) or not key or key.startswith("/") or "\\" in key
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in key)):
        raise InvalidKey(f"invalid store key {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts) or ":" in parts[0]:
        raise InvalidKey(f"invalid store key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A folder-like prefix without its trailing slash ("" is the whole store).

    Prefixes name folders, not the start of names, on both backends: the prefix `12`
    lists `12/a` but never `123/a`."""
    stripped = prefix[:-1] if prefix.endswith("/") else prefix
    return check_key(stripped) if stripped else ""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _is_partial(name: str) -> bool:
    """A temporary file of `quanta_spec.files` (an unfinished write, or a crash's leftover)."""
    return name.startswith(".") and PARTIAL in name


def sha256_file(path: str | os.PathLike[str]) -> Stored:
    """Size and SHA-256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Stored(size, digest.hexdigest())


class StoreReader(io.RawIOBase):
    """A stream over `length` bytes of an object from byte `start`; `size` is the whole
    object's size and `sha256` its recorded digest (None when the store keeps none), so
    that an HTTP handler writes Content-Range and ETag from one request to the store."""

    def __init__(self, raw: Any, *, key: str, size: int, start: int, length: int,
                 sha256: str | None) -> None:
        super().__init__()
        self._raw = raw
        self._left = length
        self.key, self.size, self.start, self.length, self.sha256 = (
            key, size, start, length, sha256)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0 or self._raw is None:
            return 0
        wanted = min(len(buffer), self._left)
        data = self._raw.read(wanted)
        if not data:
            raise StoreError(f"'{self.key}' ended {self._left} bytes early")
        n = len(data)
        buffer[:n] = data
        self._left -= n
        return n

    def iter_chunks(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The bytes in chunks, closing the stream at the end (for a streamed response)."""
        try:
            while chunk := self.read(chunk_size):
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        if self._raw is not None:
            try:
                self._raw.close()
            finally:
                self._raw = None
        super().close()


def _clamp(key: str, size: int, start: int, length: int | None) -> int:
    """Bytes to read from `start` (0 <= start <= size, else InvalidRange)."""
    if start < 0 or (length is not None and length < 0):
        raise ValueError(f"negative range ({start}, {length}) for '{key}'")
    if start > size:
        raise InvalidRange(key, start, size)
    left = size - start
    return left if length is None else min(length, left)


class ArtifactStore(ABC):
    """Keys to bytes. Keys are checked by `check_key`; every method raises InvalidKey on
    a bad one, KeyNotFound on a missing object where one is needed."""

    # -- the primitives each backend implements --------------------------------------

    @abstractmethod
    def put(self, key: str, source: Source, *, consume: bool = False) -> Stored:
        """Store `source` (bytes, a local file's path, or a binary stream read to its end)
        under `key`, replacing any object there; readers see the old object or the new
        one, never part of it. Returns its size and SHA-256.

        With `consume` and a file's path, the file is the caller's to give away: the
        local folder moves it into place (no copy of a large upload), a bucket removes it
        once it is stored."""

    @abstractmethod
    def get(self, key: str, start: int = 0, length: int | None = None) -> StoreReader:
        """A stream of the object from byte `start` (`length` bytes, or to the end; a
        range past the end is cut at the end, one starting past it is InvalidRange)."""

    @abstractmethod
    def stat(self, key: str, *, digest: bool = False) -> ObjectInfo | None:
        """Size and SHA-256 of one object, or None. S3 returns the recorded digest at
        no cost; the local folder computes it only with `digest=True`."""

    @abstractmethod
    def list(self, prefix: str = "", *, digests: bool = False) -> list[ObjectInfo]:
        """Every object under the folder `prefix`, sorted by key (unfinished writes left
        out); SHA-256s only with `digests=True` (one read or request per object)."""

    @abstractmethod
    def names(self, prefix: str = "") -> list[str]:
        """The names right under the folder `prefix`, sorted: its objects and its
        sub-folders (as S3 lists with a `/` delimiter), e.g. the attempts of a job."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object (nothing happens if there is none)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder `prefix` (never the whole store: an
        empty prefix is InvalidKey); returns how many were removed."""

    @abstractmethod
    def url(self, key: str = "") -> str:
        """Where a key lives, for logs and messages (never credentials)."""

    @abstractmethod
    def move_prefix(self, source: str, target: str) -> int:
        """Make the folder `target` hold exactly what `source` holds, and remove `source`
        (a promotion). The local folder renames, in one step; a bucket copies each object
        on the server, removes what `target` held beyond them, then removes `source`, so
        that a move cut short is done again from the start. Returns the objects moved."""

    # -- shared by both backends -----------------------------------------------------

    def iter_bytes(self, key: str, start: int = 0, length: int | None = None,
                   chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes in chunks; opens the object lazily, at the first chunk."""
        yield from self.get(key, start, length).iter_chunks(chunk_size)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def local_path(self, key: str) -> Path | None:
        """The object as a local file when the store is a local folder (read it in place,
        never write to it), else None."""
        return None

    def local_dir(self, prefix: str) -> Path | None:
        """The local folder of a prefix when the store is a local folder (a writer may
        write there directly and `put_tree` then only records), else None."""
        return None

    def fetch_to(self, key: str, local_path: str | os.PathLike[str],
                 sha256: str | None = None) -> Stored:
        """Copy the object to `local_path` atomically, checking its SHA-256 against
        `sha256` or, when not given, the digest the store recorded; on a mismatch
        IntegrityError and `local_path` is left as it was."""
        target = Path(local_path)
        digest = hashlib.sha256()
        size = 0
        with self.get(key) as reader, replacing(target, target.suffix) as tmp:
            expected = sha256 or reader.sha256
            with open(tmp, "wb") as out:
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected is not None and digest.hexdigest() != expected:
                raise IntegrityError(
                    f"{self.url(key)}: SHA-256 {digest.hexdigest()}, expected {expected}")
        return Stored(size, digest.hexdigest())

    def put_tree(self, prefix: str, folder: str | os.PathLike[str]) -> list[ObjectInfo]:
        """Store every regular file under `folder` (symlinks skipped) at `prefix/relative
        path`; returns the stored objects with their digests, sorted by key."""
        prefix = check_prefix(prefix)
        stored = []
        for relative, path in _walk(Path(folder)):
            key = _join(prefix, relative)
            size, digest = self.put(key, path)
            stored.append(ObjectInfo(key, size, digest))
        return sorted(stored)

    def fetch_tree(self, prefix: str, folder: str | os.PathLike[str]) -> list[ObjectInfo]:
        """Copy every object under `prefix` into `folder` (keys relative to the prefix),
        each verified; files already there with other names are left alone."""
        prefix = check_prefix(prefix)
        fetched = []
        for info in self.list(prefix):
            relative = info.key[len(prefix) + 1:] if prefix else info.key
            size, digest = self.fetch_to(info.key, Path(folder, *relative.split("/")))
            fetched.append(ObjectInfo(info.key, size, digest))
        return fetched


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of every regular file under `root`, no symlinks and no
    unfinished writes, in a stable order."""
    if not root.is_dir() or root.is_symlink():
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not Path(folder, d).is_symlink())
        for name in sorted(files):
            path = Path(folder, name)
            if _is_partial(name) or path.is_symlink() or not path.is_file():
                continue
            yield path.relative_to(root).as_posix(), path


def _copy_hashing(source: Source, out: IO[bytes]) -> Stored:
    """Write `source` to `out` in chunks, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        out.write(data)
        digest.update(data)
        return Stored(len(data), digest.hexdigest())
    with contextlib.ExitStack() as stack:
        handle: IO[bytes] = (stack.enter_context(open(source, "rb"))
                             if isinstance(source, str | os.PathLike) else source)
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return Stored(size, digest.hexdigest())


class LocalStore(ArtifactStore):
    """Keys as files under `root`, in the layout the service has always had on disk.

    A key never leads outside `root`: bad keys are refused, and a symlink anywhere on the
    way to an object makes it unknown (read) or refused (write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = self.root
        for part in check_key(key).split("/"):
            path = path / part
            if path.is_symlink():
                raise KeyNotFound(f"{self.url(key)}: a symlink is on the way")
        return path

    def _file(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise KeyNotFound(f"no object {self.url(key)}")
        return path

    def put(self, key: str, source: Source, *, consume: bool = False) -> Stored:
        path = self._path(key)
        if path.is_dir():
            raise InvalidKey(f"{self.url(key)} is a folder")
        same = isinstance(source, str | os.PathLike) and _same_file(source, path)
        if same:  # already in place (a worker that wrote straight into the folder)
            return sha256_file(path)
        if consume and isinstance(source, str | os.PathLike):
            stored = sha256_file(source)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, path)
                return stored
            except OSError:  # another file system: copied below, then removed
                pass
            stored = self.put(key, source)
            Path(source).unlink(missing_ok=True)
            return stored
        with replacing(path, path.suffix) as tmp, open(tmp, "wb") as out:
            stored = _copy_hashing(source, out)
            out.flush()
            os.fsync(out.fileno())
        return stored

    def get(self, key: str, start: int = 0, length: int | None = None) -> StoreReader:
        path = self._file(key)
        handle = open(path, "rb")  # noqa: SIM115 (the reader closes it)
        try:
            size = os.fstat(handle.fileno()).st_size
            count = _clamp(key, size, start, length)
            handle.seek(start)
        except BaseException:
            handle.close()
            raise
        return StoreReader(handle, key=key, size=size, start=start, length=count, sha256=None)

    def stat(self, key: str, *, digest: bool = False) -> ObjectInfo | None:
        try:
            path = self._file(key)
        except KeyNotFound:
            return None
        if digest:
            size, sha = sha256_file(path)
            return ObjectInfo(key, size, sha)
        return ObjectInfo(key, path.stat().st_size)

    def list(self, prefix: str = "", *, digests: bool = False) -> list[ObjectInfo]:
        prefix = check_prefix(prefix)
        try:
            folder = self._path(prefix) if prefix else self.root
        except KeyNotFound:
            return []
        found = []
        for relative, path in _walk(folder):
            key = _join(prefix, relative)
            if digests:
                size, sha = sha256_file(path)
                found.append(ObjectInfo(key, size, sha))
            else:
                found.append(ObjectInfo(key, path.stat().st_size))
        return sorted(found)

    def names(self, prefix: str = "") -> list[str]:
        prefix = check_prefix(prefix)
        try:
            folder = self._path(prefix) if prefix else self.root
        except KeyNotFound:
            return []
        if not folder.is_dir() or folder.is_symlink():
            return []
        return sorted(entry.name for entry in folder.iterdir()
                      if not entry.is_symlink() and not _is_partial(entry.name)
                      and (entry.is_dir() or entry.is_file()))

    def delete(self, key: str) -> None:
        with contextlib.suppress(KeyNotFound):
            self._file(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        if not prefix:
            raise InvalidKey("delete_prefix needs a prefix (it never empties the whole store)")
        try:
            folder = self._path(prefix)
        except KeyNotFound:
            return 0
        if not folder.is_dir():
            return 0
        count = sum(1 for _ in _walk(folder))
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def url(self, key: str = "") -> str:
        return (self.root / key).as_uri() if key else self.root.as_uri()

    def move_prefix(self, source: str, target: str) -> int:
        source_dir = self._path(check_prefix(source) or "?")
        target_dir = self._path(check_prefix(target) or "?")
        if not source_dir.is_dir():
            return 0
        count = sum(1 for _ in _walk(source_dir))
        aside = None
        if target_dir.exists():  # left by an older release, or a move cut short
            aside = target_dir.with_name(f".{target_dir.name}.replaced-{uuid.uuid4().hex}")
            os.rename(target_dir, aside)
        target_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source_dir, target_dir)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return count

    def local_path(self, key: str) -> Path | None:
        try:
            return self._file(key)
        except KeyNotFound:
            return None

    def local_dir(self, prefix: str) -> Path | None:
        prefix = check_prefix(prefix)
        return self._path(prefix) if prefix else self.root


def _same_file(a: str | os.PathLike[str], b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class S3Store(ArtifactStore):
    """Keys as objects `prefix/key` of an S3 bucket (AWS, MinIO, Ceph, moto...).

    Big files go up in parts of `part_bytes` (boto3's managed transfer), so memory stays
    near `part_bytes * max_concurrency` whatever the file's size. The SHA-256 of each
    object is in its metadata; the bucket must exist (the deployment creates it)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region_name: str | None = None, part_bytes: int = 16 * MiB,
                 max_concurrency: int = 4, client: Any = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = check_prefix(prefix.strip("/")) if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        if client is None:
            config = Config(
                retries={"mode": "standard", "max_attempts": 5},
                # A custom endpoint (MinIO, Ceph) rarely has per-bucket DNS names.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region_name, config=config)
        self.client = client
        self.part_bytes = part_bytes
        self.transfer = TransferConfig(
            multipart_threshold=part_bytes, multipart_chunksize=part_bytes,
            max_concurrency=max_concurrency, io_chunksize=256 * 1024)

    def _key(self, key: str) -> str:
        return _join(self.prefix, check_key(key))

    def _folder(self, prefix: str) -> str:
        """The S3 prefix of a folder, with its trailing slash ("" : the whole store)."""
        folder = check_prefix(prefix)
        full = _join(self.prefix, folder) if folder else self.prefix
        return f"{full}/" if full else ""

    def _missing(self, exc: Exception) -> bool:
        return _code(exc) in ("404", "NoSuchKey", "NotFound")

    def put(self, key: str, source: Source, *, consume: bool = False) -> Stored:
        stored = self._put(key, source)
        if consume and isinstance(source, str | os.PathLike):
            Path(source).unlink(missing_ok=True)
        return stored

    def _put(self, key: str, source: Source) -> Stored:
        full = self._key(key)
        with tempfile.SpooledTemporaryFile(max_size=self.part_bytes) as spool:
            if isinstance(source, str | os.PathLike):
                stored = sha256_file(source)  # the digest must be known before the upload
                body: Any = None
            elif isinstance(source, bytes | bytearray | memoryview):
                data = bytes(source)
                stored = Stored(len(data), hashlib.sha256(data).hexdigest())
                body = io.BytesIO(data)
            elif _seekable(source):
                start = source.tell()
                stored = _copy_hashing(source, _Discard())
                source.seek(start)
                body = source
            else:  # a one-pass stream: spooled (in memory up to a part, then on disk)
                stored = _copy_hashing(source, spool)
                spool.seek(0)
                body = spool
            extra = {"Metadata": {SHA256_META: stored.sha256}}
            if body is None:
                self.client.upload_file(os.fspath(source), self.bucket, full,  # type: ignore[arg-type]
                                        ExtraArgs=extra, Config=self.transfer)
            else:
                self.client.upload_fileobj(body, self.bucket, full, ExtraArgs=extra,
                                           Config=self.transfer)
        return stored

    def get(self, key: str, start: int = 0, length: int | None = None) -> StoreReader:
        full = self._key(key)
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"negative range ({start}, {length}) for '{key}'")
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if length == 0:  # S3 has no empty range
            return self._empty(key, start)
        if length is not None:
            args["Range"] = f"bytes={start}-{start + length - 1}"
        elif start > 0:
            args["Range"] = f"bytes={start}-"
        try:
            response = self.client.get_object(**args)
        except Exception as exc:
            if self._missing(exc):
                raise KeyNotFound(f"no object {self.url(key)}") from exc
            if _code(exc) == "InvalidRange":  # at or past the end (or an empty object)
                return self._empty(key, start)
            raise
        content_range = response.get("ContentRange")  # "bytes 0-9/100"
        size = (int(content_range.rsplit("/", 1)[1]) if content_range
                else int(response["ContentLength"]))
        return StoreReader(response["Body"], key=key, size=size, start=start,
                           length=int(response["ContentLength"]),
                           sha256=response.get("Metadata", {}).get(SHA256_META))

    def _empty(self, key: str, start: int) -> StoreReader:
        """No bytes from `start`: fine at the end of the object, InvalidRange past it."""
        info = self.stat(key)
        if info is None:
            raise KeyNotFound(f"no object {self.url(key)}")
        _clamp(key, info.size, start, 0)
        return StoreReader(None, key=key, size=info.size, start=start, length=0,
                           sha256=info.sha256)

    def stat(self, key: str, *, digest: bool = False) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._missing(exc):
                return None
            raise
        return ObjectInfo(key, int(head["ContentLength"]),
                          head.get("Metadata", {}).get(SHA256_META))

    def _list_full(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._folder(prefix)):
            yield from page.get("Contents", [])

    def list(self, prefix: str = "", *, digests: bool = False) -> list[ObjectInfo]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        for item in self._list_full(prefix):
            key = item["Key"][strip:]
            if digests:
                info = self.stat(key)
                if info is not None:
                    found.append(info)
            else:
                found.append(ObjectInfo(key, int(item["Size"])))
        return sorted(found)

    def names(self, prefix: str = "") -> list[str]:
        folder = self._folder(prefix)
        found: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                found.add(common["Prefix"][len(folder):].rstrip("/"))
            for item in page.get("Contents", []):
                found.add(item["Key"][len(folder):])
        return sorted(name for name in found if name)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        if not check_prefix(prefix):
            raise InvalidKey("delete_prefix needs a prefix (it never empties the whole store)")
        count = 0
        batch: list[dict[str, str]] = []
        for item in self._list_full(prefix):
            batch.append({"Key": item["Key"]})
            if len(batch) == 1000:  # the most one DeleteObjects request takes
                count += self._delete_batch(batch)
                batch = []
        if batch:
            count += self._delete_batch(batch)
        return count

    def _delete_batch(self, batch: list[dict[str, str]]) -> int:
        response = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = response.get("Errors") or []
        if errors:
            raise StoreError(f"could not delete {len(errors)} objects: {errors[0]}")
        return len(batch)

    def url(self, key: str = "") -> str:
        path = _join(self.prefix, key) if key else self.prefix
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{path}{where}"

    def move_prefix(self, source: str, target: str) -> int:
        source, target = check_prefix(source), check_prefix(target)
        if not source or not target:
            raise InvalidKey("move_prefix needs two folders")
        moved = self.list(source)
        if not moved:  # nothing staged: done already (never empty the target for it)
            return 0
        kept = set()
        for info in moved:
            relative = info.key[len(source) + 1:]
            key = _join(target, relative)
            self._copy(info.key, key, info.size)
            kept.add(key)
        for info in self.list(target):
            if info.key not in kept:
                self.delete(info.key)
        self.delete_prefix(source)
        return len(moved)

    def _copy(self, source: str, target: str, size: int) -> None:
        """A server-side copy keeping the object's metadata (its SHA-256)."""
        copy_source = {"Bucket": self.bucket, "Key": self._key(source)}
        if size < COPY_IN_ONE_BYTES:  # one request copies the metadata as it is
            self.client.copy_object(Bucket=self.bucket, Key=self._key(target),
                                    CopySource=copy_source)
            return
        info = self.stat(source)
        metadata = {SHA256_META: info.sha256} if info is not None and info.sha256 else {}
        self.client.copy(copy_source, self.bucket, self._key(target),
                         ExtraArgs={"Metadata": metadata, "MetadataDirective": "REPLACE"},
                         Config=self.transfer)


def _code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable()) and stream.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False


class _Discard:
    """A sink for hashing a seekable stream before its upload."""

    def write(self, data: bytes) -> int:
        return len(data)


class StoreCache:
    """Local copies of a store's objects for a worker: each key is fetched once into
    `cache_dir/key` and its SHA-256 checked again before every reuse, so a corrupted or
    outdated copy (an object replaced by another host) is fetched anew.

    With a local folder as the store, `path` returns the object's own file and copies
    nothing, unless `copy_local` asks for copies (tests, or a store on a slow disk)."""

    def __init__(self, store: ArtifactStore, cache_dir: str | os.PathLike[str], *,
                 copy_local: bool = False, max_bytes: int = 0) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.copy_local = copy_local
        #: Beyond this many bytes, the least recently used copies go (0: no limit).
        self.max_bytes = max_bytes
        self.fetches = 0  # objects actually transferred (for logs and tests)

    def path(self, key: str, sha256: str | None = None) -> Path:
        """A verified local file with the content of `key`. `sha256` (for instance from
        the artifact index) is what the content must hash to; without it, the digest the
        store recorded is used, and with neither the object is fetched every time."""
        if not self.copy_local:
            direct = self.store.local_path(key)
            if direct is not None:
                return direct
        target = self.cache_dir.joinpath(*check_key(key).split("/"))
        expected = sha256
        if expected is None:
            info = self.store.stat(key, digest=True)
            if info is None:
                raise KeyNotFound(f"no object {self.store.url(key)}")
            expected = info.sha256
        if expected is not None and target.is_file() and not target.is_symlink():
            if sha256_file(target).sha256 == expected:
                os.utime(target)  # recently used: trimmed last
                return target
            log.warning("cached %s does not match its SHA-256; fetching it again", key)
        self.store.fetch_to(key, target, expected)
        self.fetches += 1
        self.trim(keep=target)
        return target

    def trim(self, keep: Path | None = None) -> int:
        """Remove the least recently used copies until the cache holds at most `max_bytes`
        (never `keep`, the copy just handed out); returns how many went. A copy in use
        by a job stays readable: an open file outlives its name."""
        if not self.max_bytes:
            return 0
        files = [(path.stat(), path) for _, path in _walk(self.cache_dir)]
        total = sum(stat.st_size for stat, _ in files)
        removed = 0
        for stat, path in sorted(files, key=lambda item: item[0].st_mtime_ns):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= stat.st_size
            removed += 1
        return removed


# -- settings ------------------------------------------------------------------------

def parse_store_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; ValueError on anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"QUANTA_STORE_URL must be s3://bucket[/prefix], not {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket or "/" in bucket:
        raise ValueError(f"QUANTA_STORE_URL {url!r} names no bucket")
    prefix = prefix.strip("/")
    if prefix:
        check_prefix(prefix)
    return bucket, prefix


class StoreSettings(Protocol):
    """What the factories read of `quanta_jobs.settings.Settings` (which imports this
    module to check `QUANTA_STORE_URL`, so this one does not import it back)."""

    store_url: str | None
    s3_endpoint_url: str | None
    s3_part_bytes: int
    store_cache_max_bytes: int
    artifacts_dir: Path
    data_dir: Path | None

    @property
    def uploads_path(self) -> Path: ...

    @property
    def checkpoints_path(self) -> Path: ...

    @property
    def store_cache_path(self) -> Path: ...


def local_area_dir(settings: StoreSettings, area: Area) -> Path:
    """The local folder of an area, as the settings have always named it."""
    if area == "artifacts":
        return settings.artifacts_dir
    if area == "uploads":
        return settings.uploads_path
    if area == "checkpoints":
        return settings.checkpoints_path
    if area == "datasets":
        if settings.data_dir is not None:
            return settings.data_dir
        return default_data_dir()  # where the library looks too
    raise ValueError(f"unknown store area {area!r}; one of {', '.join(AREAS)}")


def store_from_settings(settings: StoreSettings, area: Area) -> ArtifactStore:
    """The store of one area: its local folder without `QUANTA_STORE_URL`, else the
    prefix `area/` in the bucket (`s3://bucket/prefix` -> `prefix/area/key`).

    One store per distinct configuration and process (a bucket's client keeps its
    connections), shared by threads: boto3 clients and the local folder are both safe
    to use from several threads."""
    if area not in AREAS:
        raise ValueError(f"unknown store area {area!r}; one of {', '.join(AREAS)}")
    if settings.store_url is None:
        return _local_store(local_area_dir(settings, area))
    return _bucket_store(settings.store_url, area, settings.s3_endpoint_url,
                         settings.s3_part_bytes)


@lru_cache(maxsize=32)
def _local_store(root: Path) -> LocalStore:
    return LocalStore(root)


@lru_cache(maxsize=32)
def _bucket_store(url: str, area: Area, endpoint_url: str | None, part_bytes: int) -> S3Store:
    bucket, prefix = parse_store_url(url)
    return S3Store(bucket, _join(prefix, area), endpoint_url=endpoint_url,
                   part_bytes=part_bytes)


def work_dir(settings: StoreSettings, area: Area, prefix: str) -> Path:
    """The local folder where this process writes what goes to `prefix` of an area: the
    store's own folder when the store is local (nothing to send afterwards), else a
    folder of the cache (`QUANTA_STORE_CACHE_DIR/work/area/prefix`) that a `Mirror`
    sends to the bucket."""
    store = store_from_settings(settings, area)
    direct = store.local_dir(prefix)
    if direct is not None:
        return direct
    return settings.store_cache_path.joinpath("work", area, *check_prefix(prefix).split("/"))


class Mirror:
    """Keeps the folder `prefix` of a store a copy of a local folder, sending only the
    files that changed since the last `push` and removing the objects whose file is
    gone, so that a worker pushes its checkpoints after every epoch for the cost of what
    that epoch rewrote. With a local store whose folder is the local folder itself,
    there is nothing to send."""

    def __init__(self, store: ArtifactStore, prefix: str, folder: Path) -> None:
        self.store, self.prefix, self.folder = store, check_prefix(prefix), folder
        self.in_place = store.local_dir(self.prefix) == folder
        self._sent: dict[str, tuple[tuple[int, int, int], ObjectInfo]] = {}

    def push(self) -> list[ObjectInfo]:
        """Send what changed; returns every object of the folder with its SHA-256."""
        found: dict[str, ObjectInfo] = {}
        for relative, path in _walk(self.folder):
            key = _join(self.prefix, relative)
            stat = path.stat()
            mark = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
            sent = self._sent.get(key)
            if sent is not None and sent[0] == mark:
                found[key] = sent[1]
                continue
            if self.in_place:
                size, digest = sha256_file(path)
            else:
                size, digest = self.store.put(key, path)
            info = ObjectInfo(key, size, digest)
            self._sent[key] = (mark, info)
            found[key] = info
        for key in [k for k in self._sent if k not in found]:
            if not self.in_place:
                self.store.delete(key)
            del self._sent[key]
        return sorted(found.values())


def cache_from_settings(settings: StoreSettings, area: Area) -> StoreCache:
    """A worker's cache of one area under `QUANTA_STORE_CACHE_DIR/area`."""
    return StoreCache(store_from_settings(settings, area), settings.store_cache_path / area,
                      max_bytes=settings.store_cache_max_bytes)
