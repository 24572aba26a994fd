"""The artifact store: one suite over the local folder and an S3 bucket.

The bucket is served by moto's standalone server in its own process (real HTTP, real
multipart uploads, real ranged GETs), never an in-process mock; without moto the S3
half is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from quanta_jobs.settings import Settings
from quanta_jobs.store import (
    ArtifactStore,
    IntegrityError,
    InvalidKey,
    InvalidRange,
    KeyNotFound,
    LocalStore,
    MiB,
    ObjectInfo,
    S3Store,
    StoreCache,
    check_key,
    parse_store_url,
    store_from_settings,
)
from tests.support.s3server import BUCKET, S3_ENV


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OnePass(io.RawIOBase):
    """A stream that cannot seek, like a request body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(buffer), 1000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def read_all(store: ArtifactStore, key: str, start: int = 0, length: int | None = None) -> bytes:
    with store.get(key, start, length) as reader:
        return reader.read()


# --- put / get / stat ------------------------------------------------------------------

def test_put_each_kind_of_source_and_read_it_back(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    local = tmp_path / "src.bin"
    local.write_bytes(data)
    sources = {"bytes": data, "path": local, "str": str(local), "seekable": io.BytesIO(data),
               "one-pass": OnePass(data)}
    for name, source in sources.items():
        size, digest = store.put(f"job/{name}.bin", source)
        assert (size, digest) == (len(data), sha(data)), name
        assert read_all(store, f"job/{name}.bin") == data, name
        info = store.stat(f"job/{name}.bin", digest=True)
        assert info == ObjectInfo(f"job/{name}.bin", len(data), sha(data))
    assert store.exists("job/bytes.bin") and not store.exists("job/nope.bin")
    assert store.stat("job/nope.bin") is None


def test_put_replaces_and_reader_knows_size_and_digest(store: ArtifactStore) -> None:
    store.put("a/x.txt", b"old content")
    store.put("a/x.txt", b"new")
    with store.get("a/x.txt") as reader:
        assert reader.read() == b"new"
        assert reader.size == 3
        # S3 hands back the recorded digest with the object; the local folder has none.
        assert reader.sha256 in (None, sha(b"new"))
        if isinstance(store, S3Store):
            assert reader.sha256 == sha(b"new")


def test_empty_object(store: ArtifactStore) -> None:
    assert store.put("e/empty", b"") == (0, sha(b""))
    assert read_all(store, "e/empty") == b""
    assert read_all(store, "e/empty", 0, 10) == b""
    assert store.stat("e/empty").size == 0  # type: ignore[union-attr]


def test_missing_key(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(KeyNotFound):
        store.get("no/such")
    with pytest.raises(KeyNotFound):
        store.get("no/such", 5, 3)
    with pytest.raises(KeyNotFound):
        store.fetch_to("no/such", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- ranges ----------------------------------------------------------------------------

def test_ranges(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    store.put("r/data", data)
    assert read_all(store, "r/data", 0, 1) == data[:1]
    assert read_all(store, "r/data", 100, 50) == data[100:150]
    assert read_all(store, "r/data", 10_000) == data[10_000:]
    assert read_all(store, "r/data", 10_000, 10_000) == data[10_000:]  # cut at the end
    assert read_all(store, "r/data", len(data)) == b""
    assert read_all(store, "r/data", 7, 0) == b""
    with store.get("r/data", 1000, 24) as reader:
        assert (reader.start, reader.length, reader.size) == (1000, 24, len(data))
        assert reader.read(10) == data[1000:1010]
        assert reader.read() == data[1010:1024]
    with pytest.raises(InvalidRange) as caught:
        store.get("r/data", len(data) + 1)
    assert caught.value.size == len(data)
    with pytest.raises(ValueError):
        store.get("r/data", -1)
    assert b"".join(store.iter_bytes("r/data", 5, 5000, chunk_size=777)) == data[5:5005]


# --- list / delete ---------------------------------------------------------------------

def test_list_is_by_folder_sorted_and_with_digests(store: ArtifactStore) -> None:
    files = {"12/b.txt": b"b", "12/a/deep.json": b"{}", "123/c.txt": b"ccc", "top": b"t"}
    for key, data in files.items():
        store.put(key, data)
    assert store.list("12") == [ObjectInfo("12/a/deep.json", 2), ObjectInfo("12/b.txt", 1)]
    assert store.list("12/") == store.list("12")
    assert [o.key for o in store.list()] == sorted(files)
    assert store.list("12", digests=True) == [
        ObjectInfo("12/a/deep.json", 2, sha(b"{}")), ObjectInfo("12/b.txt", 1, sha(b"b"))]
    assert store.list("nothing") == []


def test_names_are_the_children_of_a_folder(store: ArtifactStore) -> None:
    for key in ("job/1/a.h5", "job/1/b/c", "job/2/x", "job/3.outcome.json", "job10/y"):
        store.put(key, b".")
    assert store.names("job") == ["1", "2", "3.outcome.json"]
    assert store.names("job/1") == ["a.h5", "b"]
    assert store.names() == ["job", "job10"]
    assert store.names("none") == []


def test_delete_and_delete_prefix(store: ArtifactStore) -> None:
    for key in ("j1/a", "j1/sub/b", "j10/c", "j2/d"):
        store.put(key, key.encode())
    store.delete("j2/d")
    store.delete("j2/d")  # again: nothing there, no error
    assert not store.exists("j2/d")
    assert store.delete_prefix("j1") == 2
    assert [o.key for o in store.list()] == ["j10/c"]
    assert store.delete_prefix("j1") == 0
    with pytest.raises(InvalidKey):
        store.delete_prefix("")
    with pytest.raises(InvalidKey):
        store.delete_prefix("/")


# --- keys ------------------------------------------------------------------------------

BAD_KEYS = ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", ".", "..",
            "a\\b", "a\x00b", "a\nb", "C:/x", "c:x"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused_everywhere(store: ArtifactStore, key: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)
    with pytest.raises(InvalidKey):
        store.stat(key)
    with pytest.raises(InvalidKey):
        store.delete(key)
    with pytest.raises(InvalidKey):
        store.fetch_to(key, tmp_path / "out")
    if key not in ("", "a/"):  # "" and "a/" are valid prefixes (the store, folder a)
        with pytest.raises(InvalidKey):
            store.list(key)


def test_good_keys() -> None:
    for key in ("a", "job-1/quantas_r_0_l_all.jsonl", "x/y/z.keras", "name with space", "é"):
        assert check_key(key) == key


# --- big files -------------------------------------------------------------------------

def test_big_file_goes_up_in_parts_and_comes_back_whole(store: ArtifactStore,
                                                         tmp_path: Path) -> None:
    data = os.urandom(12 * MiB + 12345)
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    assert store.put("big/weights.h5", big) == (len(data), sha(data))
    assert store.put("big/stream.h5", OnePass(data)) == (len(data), sha(data))
    if isinstance(store, S3Store):  # a multipart object's ETag ends with its part count
        for key in ("big/weights.h5", "big/stream.h5"):
            head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
            assert head["ETag"].strip('"').endswith("-3"), head["ETag"]
            assert head["Metadata"]["sha256"] == sha(data)
    out = tmp_path / "copy" / "weights.h5"
    assert store.fetch_to("big/weights.h5", out) == (len(data), sha(data))
    assert out.read_bytes() == data
    assert read_all(store, "big/stream.h5", 6 * MiB, 100) == data[6 * MiB: 6 * MiB + 100]


# --- fetch_to, trees -------------------------------------------------------------------

def test_fetch_to_refuses_a_wrong_digest_and_keeps_the_old_file(store: ArtifactStore,
                                                                 tmp_path: Path) -> None:
    store.put("f/model.keras", b"the model")
    target = tmp_path / "worker" / "model.keras"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with pytest.raises(IntegrityError):
        store.fetch_to("f/model.keras", target, sha256=sha(b"something else"))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]  # no leftovers
    assert store.fetch_to("f/model.keras", target, sha256=sha(b"the model")).size == 9
    assert target.read_bytes() == b"the model"


def test_put_tree_and_fetch_tree(store: ArtifactStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "summary.json").write_text('{"a": 1}')
    (out / "plots" / "p.png").write_bytes(b"\x89PNG")
    (out / ".summary.json.abc.partial.json").write_text("half")  # an unfinished write
    (out / "link").symlink_to(out / "summary.json")
    stored = store.put_tree("job9", out)
    assert stored == [ObjectInfo("job9/plots/p.png", 4, sha(b"\x89PNG")),
                      ObjectInfo("job9/summary.json", 8, sha(b'{"a": 1}'))]
    assert [o.key for o in store.list("job9")] == ["job9/plots/p.png", "job9/summary.json"]
    back = tmp_path / "back"
    fetched = store.fetch_tree("job9", back)
    assert fetched == stored
    assert (back / "plots" / "p.png").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in back.rglob("*") if p.is_file()) == ["p.png", "summary.json"]


# --- the worker's cache ----------------------------------------------------------------

def test_cache_fetches_once_verifies_and_refetches(store: ArtifactStore, tmp_path: Path) -> None:
    store.put("u/weights.h5", b"weights v1")
    cache = StoreCache(store, tmp_path / "cache", copy_local=True)
    first = cache.path("u/weights.h5")
    assert first.read_bytes() == b"weights v1" and first.is_relative_to(tmp_path / "cache")
    assert cache.path("u/weights.h5") == first
    assert cache.fetches == 1
    first.write_bytes(b"weights v!")  # corrupted on the worker's disk
    assert cache.path("u/weights.h5").read_bytes() == b"weights v1"
    assert cache.fetches == 2
    store.put("u/weights.h5", b"weights v2")  # replaced by another host (a checkpoint)
    assert cache.path("u/weights.h5").read_bytes() == b"weights v2"
    assert cache.fetches == 3
    # A digest from the artifact index is trusted over the store's and checked.
    assert cache.path("u/weights.h5", sha256=sha(b"weights v2")).read_bytes() == b"weights v2"
    assert cache.fetches == 3
    with pytest.raises(IntegrityError):
        cache.path("u/weights.h5", sha256=sha(b"weights v1"))
    with pytest.raises(KeyNotFound):
        cache.path("u/none")


def test_cache_reads_a_local_store_in_place(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("u/data.npz", b"npz")
    cache = StoreCache(store, tmp_path / "cache")
    assert cache.path("u/data.npz") == tmp_path / "root" / "u" / "data.npz"
    assert cache.fetches == 0 and not (tmp_path / "cache").exists()


# --- backend specifics -----------------------------------------------------------------

def test_local_store_keeps_the_layout_and_refuses_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    store = LocalStore(root)
    store.put("job1/quantas_r_0_l_all.jsonl", b"{}\n")
    assert (root / "job1" / "quantas_r_0_l_all.jsonl").read_bytes() == b"{}\n"
    assert not [p for p in (root / "job1").iterdir() if p.name.startswith(".")]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "evil").symlink_to(outside)
    with pytest.raises(KeyNotFound):
        store.get("evil/secret")
    with pytest.raises(KeyNotFound):
        store.put("evil/new", b"x")
    assert not (outside / "new").exists()
    assert store.stat("evil/secret") is None and store.list("evil") == []
    (root / "job1" / "ln").symlink_to(outside / "secret")
    assert store.stat("job1/ln") is None
    assert [o.key for o in store.list("job1")] == ["job1/quantas_r_0_l_all.jsonl"]


def test_local_put_tree_in_place_copies_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "artifacts")
    folder = store.local_dir("job2")
    assert folder == tmp_path / "artifacts" / "job2"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    before = (folder / "a.txt").stat().st_ino
    assert store.put_tree("job2", folder) == [ObjectInfo("job2/a.txt", 1, sha(b"a"))]
    assert (folder / "a.txt").stat().st_ino == before


def test_s3_metadata_and_url(s3_endpoint: str, tmp_path: Path) -> None:
    store = S3Store(BUCKET, "/meta/", endpoint_url=s3_endpoint)
    store.put("k/v", b"value")
    head = store.client.head_object(Bucket=BUCKET, Key="meta/k/v")
    assert head["Metadata"] == {"sha256": sha(b"value")}
    assert store.url("k/v") == f"s3://{BUCKET}/meta/k/v at {s3_endpoint}"
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in store.url("k/v")
    # An object written by something else, without the digest: listed, digest unknown.
    store.client.put_object(Bucket=BUCKET, Key="meta/k/foreign", Body=b"f")
    assert store.stat("k/foreign") == ObjectInfo("k/foreign", 1, None)
    assert store.fetch_to("k/foreign", tmp_path / "foreign").sha256 == sha(b"f")


def test_a_fetch_never_replaces_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """Renaming a download over /dev/null once left the host a plain file there, and
    every service that writes to /dev/null failed (RabbitMQ respawned a process every
    75 s until the machine crawled). A pipe stands for the device here."""
    store = LocalStore(tmp_path / "store")
    store.put("k/v", b"value")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(FileExistsError, match="not a regular file"):
        store.fetch_to("k/v", pipe)
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial left


# --- settings --------------------------------------------------------------------------

def test_store_from_settings_local_by_default(tmp_path: Path) -> None:
    settings = Settings(artifacts_dir=tmp_path / "var" / "artifacts",
                        data_dir=tmp_path / "data")
    expected = {"artifacts": tmp_path / "var" / "artifacts",
                "uploads": tmp_path / "var" / "uploads",
                "checkpoints": tmp_path / "var" / "checkpoints",
                "datasets": tmp_path / "data"}
    for area, folder in expected.items():
        store = store_from_settings(settings, area)  # type: ignore[arg-type]
        assert isinstance(store, LocalStore) and store.root == folder
    assert settings.store_cache_path == tmp_path / "var" / "cache"


def test_store_from_settings_bucket(s3_endpoint: str) -> None:
    settings = Settings(store_url=f"s3://{BUCKET}/deploy1", s3_endpoint_url=s3_endpoint)
    uploads = store_from_settings(settings, "uploads")
    artifacts = store_from_settings(settings, "artifacts")
    uploads.put("u1/w.h5", b"w")
    artifacts.put("j1/s.json", b"s")
    keys = [o["Key"] for o in uploads.client.list_objects_v2(  # type: ignore[attr-defined]
        Bucket=BUCKET, Prefix="deploy1/")["Contents"]]
    assert sorted(keys) == ["deploy1/artifacts/j1/s.json", "deploy1/uploads/u1/w.h5"]
    assert [o.key for o in uploads.list()] == ["u1/w.h5"]


@pytest.mark.parametrize("url", ["http://bucket/x", "s3://", "s3:///prefix", "s3://b/../x",
                                 "bucket/prefix"])
def test_bad_store_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_store_url(url)
    with pytest.raises(ValueError):
        Settings(store_url=url)


def test_store_url_forms() -> None:
    assert parse_store_url("s3://b") == ("b", "")
    assert parse_store_url("s3://b/") == ("b", "")
    assert parse_store_url("s3://b/a/c/") == ("b", "a/c")


def test_the_cache_keeps_at_most_its_limit_dropping_the_least_recently_used(
        tmp_path: Path) -> None:
    import time

    store = LocalStore(tmp_path / "store")
    for name in "abc":
        store.put(f"k/{name}", name.encode() * 100)
    cache = StoreCache(store, tmp_path / "cache", copy_local=True, max_bytes=250)
    # The cache orders its files by the mtime it sets on each use: the sleeps below are the
    # time passing that is tested, one file-clock tick (~4-10 ms) apart so that the uses'
    # mtimes differ, no more.
    a = cache.path("k/a", sha(b"a" * 100))
    time.sleep(0.01)
    b = cache.path("k/b", sha(b"b" * 100))
    time.sleep(0.01)
    assert cache.path("k/a", sha(b"a" * 100)) == a  # used again: now newer than b
    time.sleep(0.01)
    c = cache.path("k/c", sha(b"c" * 100))
    assert (a.is_file(), b.is_file(), c.is_file()) == (True, False, True)
    assert cache.fetches == 3
    assert cache.path("k/b", sha(b"b" * 100)).read_bytes() == b"b" * 100  # fetched anew
    assert cache.fetches == 4 and sum(p.stat().st_size for p in (a, b, c) if p.is_file()) <= 250
