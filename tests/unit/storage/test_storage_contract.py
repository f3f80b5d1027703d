"""Contract tests every ``storage.base.Storage`` backend must pass.

To cover a new backend, add a factory to ``BACKENDS``; nothing else changes.  A factory
gets the pytest request (for fixtures such as the moto S3 server) and a temporary dir.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from storage import (
    InvalidKeyError,
    InvalidMetadataError,
    LocalStorage,
    MemoryStorage,
    ObjectNotFoundError,
    S3Storage,
    Storage,
    StorageError,
    put_bytes,
    read_bytes,
)
from storage.s3 import MIN_PART_SIZE


def _s3(request: pytest.FixtureRequest, *, versioned: bool, prefix: str) -> Storage:
    """A fresh moto bucket; 5 MiB parts (S3's minimum) so multipart paths are reachable."""
    server = request.getfixturevalue("moto_server")
    client = request.getfixturevalue("s3_client")
    bucket = server.new_bucket(client, versioned=versioned)
    return S3Storage(client, bucket, prefix, part_size=MIN_PART_SIZE, block_size=256 << 10)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Storage]] = {
    "local": lambda req, tmp: LocalStorage(tmp / "store"),
    "memory": lambda req, tmp: MemoryStorage(),
    # Under a prefix and unversioned / at the bucket root and versioned, so both the
    # prefix handling and delete-every-version run through the whole contract.
    "s3": lambda req, tmp: _s3(req, versioned=False, prefix="kinko/dz"),
    "s3-versioned": lambda req, tmp: _s3(req, versioned=True, prefix=""),
}

BAD_KEYS = [
    "",
    "../x",
    "a/../../x",
    "/abs",
    "a//b",
    "a/./b",
    ".",
    "..",
    "a/",
    "a/..",
    "ünïcode",
    "ｆｕｌｌｗｉｄｔｈ",
    "a b",
    "a\x00b",
    "a\\b",
    "a\nb",
    "x" * 513,
    "y" * 256,  # one segment longer than any file system allows
]


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return BACKENDS[request.param](request, tmp_path)


def _pieces(data: bytes) -> list[bytes]:
    sizes = [1, 7, 4093, 65537, 100003, 3]
    out, pos, i = [], 0, 0
    while pos < len(data):
        out.append(data[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return out


def test_round_trip_multi_mib_in_odd_pieces(storage: Storage) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    with storage.writer("dz/obj1") as sink:
        for piece in _pieces(data):
            assert sink.write(piece) == len(piece)
    assert read_bytes(storage, "dz/obj1") == data
    assert storage.head("dz/obj1").size == len(data)


def test_empty_object(storage: Storage) -> None:
    put_bytes(storage, "empty", b"")
    assert storage.exists("empty")
    assert read_bytes(storage, "empty") == b""
    assert storage.head("empty").size == 0


def test_invisible_until_commit(storage: Storage) -> None:
    with storage.writer("k", {"a": "1"}) as sink:
        sink.write(b"data")
        assert not storage.exists("k")
        assert list(storage.keys()) == []
        with pytest.raises(ObjectNotFoundError):
            storage.open("k")
        with pytest.raises(ObjectNotFoundError):
            storage.head("k")
    assert storage.exists("k")


def test_exception_in_block_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(RuntimeError), storage.writer("k") as sink:
        sink.write(b"partial data")
        raise RuntimeError("upload aborted")
    assert not storage.exists("k")
    assert list(storage.keys()) == []
    assert storage.cleanup_partials(0) == 0  # partial data already removed


def test_failed_overwrite_keeps_old_object(storage: Storage) -> None:
    put_bytes(storage, "k", b"old", {"v": "1"})
    with pytest.raises(RuntimeError), storage.writer("k", {"v": "2"}) as sink:
        sink.write(b"new-and-longer")
        raise RuntimeError("boom")
    assert read_bytes(storage, "k") == b"old"
    assert storage.head("k").metadata == {"v": "1"}


def test_overwrite_replaces_data_and_metadata(storage: Storage) -> None:
    put_bytes(storage, "k", b"first", {"v": "1"})
    put_bytes(storage, "k", b"second!")
    assert read_bytes(storage, "k") == b"second!"
    info = storage.head("k")
    assert (info.key, info.size, dict(info.metadata)) == ("k", 7, {})
    assert list(storage.keys()) == ["k"]


def test_head_reports_size_and_metadata(storage: Storage) -> None:
    meta = {"object-id": "3f2a", "kind": "upload"}
    put_bytes(storage, "dz/3f2a", b"x" * 1000, meta)
    info = storage.head("dz/3f2a")
    assert info.size == 1000
    assert dict(info.metadata) == meta


@pytest.mark.parametrize(
    "meta", [{"Upper": "x"}, {"a": "ü"}, {"a": "line\nbreak"}, {"": "x"}, {"a": "x" * 3000}]
)
def test_bad_metadata_refused(storage: Storage, meta: dict[str, str]) -> None:
    with pytest.raises(InvalidMetadataError):
        storage.writer("k", meta)
    assert not storage.exists("k")


def test_delete_is_idempotent(storage: Storage) -> None:
    put_bytes(storage, "a/b", b"x", {"m": "1"})
    storage.delete("a/b")
    assert not storage.exists("a/b")
    storage.delete("a/b")
    storage.delete("never/existed")
    with pytest.raises(ObjectNotFoundError):
        storage.head("a/b")
    put_bytes(storage, "a/b", b"y")  # re-creating after delete: no stale metadata
    assert storage.head("a/b").metadata == {}


def test_keys_with_prefix(storage: Storage) -> None:
    for key in ["a/1", "a/2", "ab/3", "b/4", "a/sub/5"]:
        put_bytes(storage, key, b"x")
    with storage.writer("a/partial") as sink:
        sink.write(b"in flight")
        assert set(storage.keys()) == {"a/1", "a/2", "ab/3", "b/4", "a/sub/5"}
        assert set(storage.keys("a/")) == {"a/1", "a/2", "a/sub/5"}
        assert set(storage.keys("a")) == {"a/1", "a/2", "ab/3", "a/sub/5"}
        assert set(storage.keys("a/s")) == {"a/sub/5"}
        assert list(storage.keys("zz")) == []
        assert list(storage.keys("zz/")) == []


def test_keys_refuses_bad_prefix(storage: Storage) -> None:
    for prefix in ["../", "/a", "a//", "a/../", "ü"]:
        with pytest.raises(InvalidKeyError):
            list(storage.keys(prefix))


def test_not_found_is_filenotfounderror(storage: Storage) -> None:
    for call in (storage.open, storage.head):
        with pytest.raises(ObjectNotFoundError) as info:
            call("missing/key")
        assert isinstance(info.value, FileNotFoundError)
        assert isinstance(info.value, StorageError)
    assert storage.exists("missing/key") is False


def test_prefix_of_keys_is_not_an_object(storage: Storage) -> None:
    put_bytes(storage, "dir/obj", b"x")
    assert not storage.exists("dir")
    with pytest.raises(ObjectNotFoundError):
        storage.open("dir")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_refused(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        storage.writer(key)
    assert isinstance(info.value, ValueError)
    for call in (storage.open, storage.head, storage.exists, storage.delete):
        with pytest.raises(InvalidKeyError):
            call(key)


def test_longest_valid_key(storage: Storage) -> None:
    key = "/".join(["x" * 200, "y" * 200, "z" * 110])
    assert len(key) == 512
    put_bytes(storage, key, b"ok")
    assert read_bytes(storage, key) == b"ok"


def test_open_stream_is_seekable(storage: Storage) -> None:
    data = bytes(range(256)) * 1000
    put_bytes(storage, "s", data)
    with storage.open("s") as stream:
        assert stream.seekable()
        assert stream.seek(1000) == 1000
        assert stream.read(10) == data[1000:1010]
        assert stream.tell() == 1010
        stream.seek(-5, os.SEEK_END)
        assert stream.read() == data[-5:]
        stream.seek(0)
        assert stream.read(3) == data[:3]


def test_cleanup_partials_removes_abandoned_writer(storage: Storage) -> None:
    put_bytes(storage, "kept", b"committed")
    abandoned = storage.writer("crashed")
    sink = abandoned.__enter__()  # never exited: simulates a crashed upload
    # More than one 5 MiB part, so that buffering backends (S3) have a partial on the
    # server too; data still in a crashed process's memory leaves nothing to sweep.
    sink.write(b"half an upload" * (450 << 10))
    assert list(storage.keys()) == ["kept"]
    assert storage.cleanup_partials(3600) == 0  # too young to be swept
    assert storage.cleanup_partials(0) >= 1
    assert storage.cleanup_partials(0) == 0
    with pytest.raises(StorageError):  # the swept writer must not commit garbage
        abandoned.__exit__(None, None, None)
    assert not storage.exists("crashed")
    assert read_bytes(storage, "kept") == b"committed"


def test_concurrent_writers(storage: Storage) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                put_bytes(storage, f"t{n}/o{i}", f"{n}-{i}".encode() * 100)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(list(storage.keys())) == 60
    assert read_bytes(storage, "t3/o7") == b"3-7" * 100


def test_duplicate_is_an_independent_exact_copy(storage: Storage) -> None:
    data = os.urandom((1 << 20) + 5)
    put_bytes(storage, "staging/a.1", data, {"created": "1"})
    shared = storage.duplicate("staging/a.1", "vault/a.1")
    assert shared is (type(storage).__name__ == "LocalStorage")  # a hard link only there
    assert read_bytes(storage, "vault/a.1") == data
    assert storage.head("vault/a.1").metadata == {"created": "1"}
    storage.delete("staging/a.1")  # the copy outlives its source
    assert read_bytes(storage, "vault/a.1") == data
    assert sorted(storage.keys()) == ["vault/a.1"]
    assert storage.cleanup_partials(0) == 0  # nothing left half-done


def test_duplicate_of_a_missing_object_raises(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError):
        storage.duplicate("staging/none", "vault/none")
    assert list(storage.keys()) == []
