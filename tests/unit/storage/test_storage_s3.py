"""S3 backend specifics against a moto server: multipart, checksums, versions, reads.

The generic behaviour is covered by ``test_storage_contract.py`` (backends "s3" and
"s3-versioned"); this file checks what is particular to S3, by watching the requests the
client sends (botocore ``before-call`` hooks) and the server state (plain boto3 calls).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import tracemalloc
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from s3server import MotoServer

from storage import ObjectNotFoundError, StorageError, put_bytes, read_bytes
from storage import s3 as s3mod
from storage.s3 import MIN_PART_SIZE, S3Storage

PART = MIN_PART_SIZE


class Recorder:
    """Records (operation name, request headers, body) of every call a client makes."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, dict[str, str], Any]] = []
        client.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        headers = {k.lower(): str(v) for k, v in params.get("headers", {}).items()}
        self.calls.append((model.name, headers, params.get("body")))

    def ops(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def of(self, op: str) -> list[tuple[dict[str, str], Any]]:
        return [(headers, body) for name, headers, body in self.calls if name == op]


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture
def client(moto_server: MotoServer) -> Any:
    """A private client per test, so event hooks never leak into other tests."""
    return moto_server.client()


@pytest.fixture
def bucket(moto_server: MotoServer, client: Any) -> str:
    return moto_server.new_bucket(client)


@pytest.fixture
def vbucket(moto_server: MotoServer, client: Any) -> str:
    return moto_server.new_bucket(client, versioned=True)


@pytest.fixture
def recorder(client: Any) -> Recorder:
    return Recorder(client)


def _body_bytes(body: Any) -> bytes:
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    body.seek(0)
    return bytes(body.read())


# -- writing: multipart, single put, checksums -------------------------------------------


def test_multipart_upload_sends_sha256_per_part(
    client: Any, bucket: str, recorder: Recorder
) -> None:
    storage = S3Storage(client, bucket, "pre", part_size=PART)
    data = os.urandom(2 * PART + 12345)
    with storage.writer("dz/big", {"object-id": "big"}) as sink:
        for pos in range(0, len(data), 100_003):
            sink.write(data[pos : pos + 100_003])
    assert "PutObject" not in recorder.ops()
    (create_headers, _), *_ = recorder.of("CreateMultipartUpload")
    assert create_headers["x-amz-checksum-algorithm"] == "SHA256"
    parts = recorder.of("UploadPart")
    assert len(parts) == 3
    expected = [data[:PART], data[PART : 2 * PART], data[2 * PART :]]
    for (headers, body), chunk in zip(parts, expected, strict=True):
        assert _body_bytes(body) == chunk
        assert headers["x-amz-checksum-sha256"] == b64sha(chunk)
        assert not any(h.startswith("x-amz-checksum-crc") for h in headers)
    assert len(recorder.of("CompleteMultipartUpload")) == 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert read_bytes(storage, "dz/big") == data
    head = client.head_object(Bucket=bucket, Key="pre/dz/big", ChecksumMode="ENABLED")
    assert head["Metadata"] == {"object-id": "big"}
    composite = b64sha(b"".join(hashlib.sha256(c).digest() for c in expected))
    assert head["ChecksumSHA256"].split("-")[0] == composite


def test_small_object_is_one_put_with_sha256(client: Any, bucket: str, recorder: Recorder) -> None:
    storage = S3Storage(client, bucket, part_size=PART)
    data = os.urandom(PART - 1)
    put_bytes(storage, "small", data, {"kind": "upload"})
    assert recorder.ops() == ["PutObject"]
    (headers, _), *_ = recorder.of("PutObject")
    assert headers["x-amz-checksum-sha256"] == b64sha(data)
    head = client.head_object(Bucket=bucket, Key="small", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == b64sha(data)
    assert head["Metadata"] == {"kind": "upload"}


def test_exception_after_first_part_aborts_upload(
    client: Any, bucket: str, recorder: Recorder
) -> None:
    storage = S3Storage(client, bucket, "pre", part_size=PART)
    with pytest.raises(RuntimeError), storage.writer("k") as sink:
        sink.write(os.urandom(PART + 10))
        raise RuntimeError("client went away")
    assert recorder.ops()[-1] == "AbortMultipartUpload"
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert storage.cleanup_partials(0) == 0


def test_writer_memory_stays_bounded(client: Any, bucket: str) -> None:
    storage = S3Storage(client, bucket, part_size=PART)
    digest = hashlib.sha256()
    rng = random.Random(7)
    piece_sizes = [1, 4096, 65536, 1 << 20, 777_777]
    total = 0
    tracemalloc.start()
    try:
        with storage.writer("huge") as sink:
            while total < 64 << 20:
                piece = rng.randbytes(min(rng.choice(piece_sizes), (64 << 20) - total))
                digest.update(piece)
                sink.write(piece)
                total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.max_buffered <= PART  # type: ignore[attr-defined]
    # One part buffered plus what botocore holds while sending it -- far below 64 MiB.
    assert peak < 4 * PART
    check = hashlib.sha256()
    with storage.open("huge") as stream:
        while chunk := stream.read(3 << 20):
            check.update(chunk)
    assert check.digest() == digest.digest()
    assert storage.head("huge").size == 64 << 20


# -- reading --------------------------------------------------------------------------


def test_ranged_reads_seek_and_cache(client: Any, bucket: str, recorder: Recorder) -> None:
    storage = S3Storage(client, bucket, part_size=PART, block_size=64 << 10, cache_blocks=3)
    data = os.urandom(1_000_003)
    put_bytes(storage, "r", data)
    rng = random.Random(1)
    with storage.open("r") as stream:
        for _ in range(200):
            pos = rng.randrange(0, len(data) + 10)
            size = rng.choice([0, 1, 100, 65536, 200_000])
            assert stream.seek(pos) == pos
            assert stream.read(size) == data[pos : pos + size]
            assert stream.tell() == min(pos + size, max(pos, len(data)))
            assert len(stream._cache) <= 3  # type: ignore[attr-defined]
        buf = bytearray(10)
        stream.seek(-4, os.SEEK_END)
        assert stream.readinto(buf) == 4 and bytes(buf[:4]) == data[-4:]
        stream.seek(0)
        assert stream.read() == data
    gets = recorder.of("GetObject")
    assert gets and all(h["range"].startswith("bytes=") and "if-match" in h for h, _ in gets)
    assert all(int(h["range"].split("-")[1]) < len(data) for h, _ in gets)
    assert stream.closed


def test_zipfile_reads_from_s3_stream(client: Any, bucket: str) -> None:
    """The office download builds on zipfile over a seekable stream."""
    storage = S3Storage(client, bucket, part_size=PART, block_size=4096)
    members = {f"f{i}.bin": os.urandom(10_000 + i) for i in range(20)}
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    put_bytes(storage, "z", blob.getvalue())
    with storage.open("z") as stream, zipfile.ZipFile(stream) as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == members


def test_overwrite_during_read_fails_instead_of_mixing(client: Any, bucket: str) -> None:
    storage = S3Storage(client, bucket, part_size=PART, block_size=1024, cache_blocks=1)
    put_bytes(storage, "o", b"a" * 4096)
    with storage.open("o") as stream:
        assert stream.read(10) == b"a" * 10
        put_bytes(storage, "o", b"b" * 4096)
        with pytest.raises(StorageError, match="changed while being read"):
            stream.read(2000)


def test_empty_object_needs_no_get(client: Any, bucket: str, recorder: Recorder) -> None:
    storage = S3Storage(client, bucket, part_size=PART)
    put_bytes(storage, "e", b"")
    with storage.open("e") as stream:
        assert stream.read() == b""
        assert stream.seek(0, os.SEEK_END) == 0
    assert "GetObject" not in recorder.ops()


# -- versioned buckets: disposal removes every version -----------------------------------


def _versions(client: Any, bucket: str) -> list[tuple[str, str]]:
    listing = client.list_object_versions(Bucket=bucket)
    return [
        (entry["Key"], kind)
        for kind in ("Versions", "DeleteMarkers")
        for entry in listing.get(kind, [])
    ]


def test_versioned_delete_removes_every_version_and_marker(client: Any, vbucket: str) -> None:
    storage = S3Storage(client, vbucket, "vault", part_size=PART)
    for generation in range(3):
        put_bytes(storage, "file", f"gen {generation}".encode())
    client.delete_object(Bucket=vbucket, Key="vault/file")  # leaves a delete marker
    put_bytes(storage, "file", b"gen 3")
    put_bytes(storage, "file-2", b"neighbour sharing the name prefix")
    assert sum(1 for key, _ in _versions(client, vbucket) if key == "vault/file") == 5
    storage.delete("file")
    assert _versions(client, vbucket) == [("vault/file-2", "Versions")]
    assert not storage.exists("file")
    storage.delete("file")  # idempotent
    assert read_bytes(storage, "file-2") == b"neighbour sharing the name prefix"


def test_suspended_versioning_still_deletes_old_versions(client: Any, vbucket: str) -> None:
    storage = S3Storage(client, vbucket, part_size=PART)
    put_bytes(storage, "k", b"v1")
    put_bytes(storage, "k", b"v2")
    client.put_bucket_versioning(Bucket=vbucket, VersioningConfiguration={"Status": "Suspended"})
    put_bytes(storage, "k", b"v3")
    storage.delete("k")
    assert _versions(client, vbucket) == []


def test_unversioned_delete_is_one_request(client: Any, bucket: str, recorder: Recorder) -> None:
    storage = S3Storage(client, bucket, part_size=PART)
    put_bytes(storage, "k", b"x")
    recorder.calls.clear()
    storage.delete("k")
    assert recorder.ops() == ["GetBucketVersioning", "DeleteObject"]
    assert not storage.exists("k")


# -- partial uploads -------------------------------------------------------------------


def test_cleanup_partials_aborts_only_abandoned_uploads_under_prefix(
    client: Any, bucket: str
) -> None:
    storage = S3Storage(client, bucket, "mine", part_size=PART)
    crashed = client.create_multipart_upload(Bucket=bucket, Key="mine/crashed")["UploadId"]
    client.upload_part(
        Bucket=bucket, Key="mine/crashed", UploadId=crashed, PartNumber=1, Body=b"x" * 100
    )
    client.create_multipart_upload(Bucket=bucket, Key="theirs/other")
    assert storage.cleanup_partials(3600) == 0
    assert storage.cleanup_partials(0) == 1
    remaining = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]]
    assert remaining == ["theirs/other"]


def test_swept_writer_fails_on_commit(client: Any, bucket: str) -> None:
    storage = S3Storage(client, bucket, part_size=PART)
    context = storage.writer("slow")
    sink = context.__enter__()
    sink.write(os.urandom(PART + 1))
    assert storage.cleanup_partials(0) == 1
    # Real S3 answers NoSuchUpload (reported as "swept before commit"); moto 5.2 answers
    # UploadPart on an aborted upload with a 500, so only the error class is checked.
    with pytest.raises(StorageError):
        context.__exit__(None, None, None)
    assert not storage.exists("slow")


def test_small_writer_has_nothing_to_sweep(client: Any, bucket: str) -> None:
    """Below one part, data only lives in the writer's memory: nothing on the server."""
    storage = S3Storage(client, bucket, part_size=PART)
    with storage.writer("tiny") as sink:
        sink.write(b"x" * 1000)
        assert storage.cleanup_partials(0) == 0
    assert read_bytes(storage, "tiny") == b"x" * 1000


# -- server-side copy ------------------------------------------------------------------


@pytest.fixture(params=["copy_object", "upload_part_copy"])
def copy_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "upload_part_copy":
        monkeypatch.setattr(s3mod, "_COPY_OBJECT_LIMIT", PART)
    yield request.param


def test_copy_from_is_server_side(
    moto_server: MotoServer, client: Any, bucket: str, recorder: Recorder, copy_mode: str
) -> None:
    dropzone = S3Storage(client, bucket, "dz", part_size=PART)
    vault = S3Storage(client, moto_server.new_bucket(client, versioned=True), "v", part_size=PART)
    data = os.urandom(2 * PART + 99)
    put_bytes(dropzone, "obj", data, {"object-id": "obj"})
    recorder.calls.clear()
    vault.copy_from(dropzone, "obj", "obj")
    assert "GetObject" not in recorder.ops() and "UploadPart" not in recorder.ops()
    if copy_mode == "copy_object":
        assert "CopyObject" in recorder.ops()
    else:
        assert recorder.ops().count("UploadPartCopy") == 3
    assert read_bytes(vault, "obj") == data
    assert vault.head("obj").metadata == {"object-id": "obj"}
    with pytest.raises(ObjectNotFoundError):
        vault.copy_from(dropzone, "missing", "x")
