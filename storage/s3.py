"""S3 storage backend: streamed multipart writes with SHA-256 checksums, ranged reads.

``S3Storage(client, bucket, prefix)`` takes a ready boto3 S3 client and never reads
configuration or the environment; :func:`make_client` builds a suitable client (retries,
checksums) for callers that have only a profile name.

Guarantees, on top of :class:`storage.base.Storage`:

* **Atomic visibility** comes from S3 itself: an object appears only when ``PutObject`` or
  ``CompleteMultipartUpload`` succeeds.  A failed writer aborts its multipart upload.
* **Bounded memory**: a writer buffers at most one part (``part_size``) and a reader at
  most ``cache_blocks * block_size``.
* **Integrity in transit**: every ``PutObject``/``UploadPart`` carries the SHA-256 of its
  bytes (``x-amz-checksum-sha256``); S3 refuses the request if the bytes it received do
  not match, and the checksum S3 echoes back is compared with ours.
* **Consistent reads**: every ranged GET of one open stream is pinned to the ETag seen at
  open time (``If-Match``), so a concurrent overwrite makes the read fail instead of
  returning a mix of old and new bytes.
* **Disposal**: on a versioned (or once-versioned, now suspended) bucket, :meth:`delete`
  removes every version and delete marker of the key, then lists again to prove it.

IAM permissions used (per bucket): ``s3:PutObject``, ``s3:AbortMultipartUpload``,
``s3:ListBucketMultipartUploads``, ``s3:ListMultipartUploadParts`` (writer, sweeper);
``s3:GetObject`` (open/head/exists -- withhold it from the client-facing role on the
vault bucket); ``s3:ListBucket`` (keys); ``s3:DeleteObject``, ``s3:GetBucketVersioning``,
``s3:ListBucketVersions``, ``s3:DeleteObjectVersion`` (delete).

Error translation: ``NoSuchKey``/404 -> ``ObjectNotFoundError``; ``AccessDenied``/403 ->
``StoragePermissionError``; anything else -> ``StorageError`` naming the S3 error code
only (the server's message text is kept on ``__cause__`` for logs, never re-worded into
ours).  A missing *bucket* is a ``StorageError``, not "object not found", so a
misconfiguration can never look like data that vanished.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TypeAlias, cast

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .base import (
    BytesLike,
    ObjectInfo,
    ObjectWriter,
    validate_key,
    validate_metadata,
    validate_prefix,
)
from .errors import InvalidKeyError, ObjectNotFoundError, StorageError, StoragePermissionError

__all__ = ["MIN_PART_SIZE", "S3Storage", "client_config", "make_client"]

_log = logging.getLogger(__name__)

S3Client: TypeAlias = Any  # boto3 clients are generated at run time; no stubs installed

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
_MAX_PART_SIZE = 5 << 30
_MAX_PARTS = 10_000
_COPY_OBJECT_LIMIT = 5 << 30  # CopyObject's maximum; larger objects use UploadPartCopy
_DELETE_BATCH = 1000  # DeleteObjects' maximum
_DELETE_PASSES = 5

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset(
    {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
     "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)  # fmt: skip


def client_config(*, max_attempts: int = 8) -> Config:
    """The botocore ``Config`` :func:`make_client` uses (tests reuse it for moto).

    ``max_attempts`` counts every attempt, the first included.  (botocore's own
    ``retries["max_attempts"]`` counts *retries*; ``total_max_attempts`` is unambiguous.)
    """
    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_supported",
        connect_timeout=10,
        read_timeout=120,
    )


def make_client(
    *, profile: str | None = None, endpoint_url: str | None = None, max_attempts: int = 8
) -> S3Client:
    """Return a boto3 S3 client configured for :class:`S3Storage`.

    Credentials, region and endpoint follow boto3's usual chain (``AWS_PROFILE``,
    ``AWS_ENDPOINT_URL_S3``, instance roles...), unless ``profile``/``endpoint_url`` are
    given.  Retries use botocore's *standard* mode: exponential backoff with jitter on
    throttling (``SlowDown``, 503), 5xx and connection errors, up to ``max_attempts``
    attempts per request.  (*adaptive* mode adds a client-side rate limiter that can block
    unrelated threads sharing the client; standard mode is enough for our request rate.)
    Raises ``StorageError`` (e.g. unknown profile).
    """
    import boto3

    config = client_config(max_attempts=max_attempts)
    try:
        session = boto3.Session(profile_name=profile) if profile else boto3.Session()
        return session.client("s3", endpoint_url=endpoint_url, config=config)
    except BotoCoreError as exc:  # e.g. ProfileNotFound; the message names no secret
        raise StorageError(f"cannot build an S3 client: {exc}") from exc


def _error_code(exc: ClientError) -> str:
    code = str(exc.response.get("Error", {}).get("Code", "") or "")
    if not code:
        code = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown"))
    return code


@contextmanager
def _translated(operation: str, key: str | None = None) -> Iterator[None]:
    """Translate botocore exceptions raised inside the block into ``StorageError``s."""
    what = f" for {key!r}" if key is not None else ""
    try:
        yield
    except ClientError as exc:
        code = _error_code(exc)
        if code in _NOT_FOUND:
            raise ObjectNotFoundError(f"no object {key!r}") from exc
        if code in _DENIED:
            raise StoragePermissionError(f"S3 {operation} denied{what}: {code}") from exc
        if code in ("PreconditionFailed", "412"):
            raise StorageError(f"object {key!r} changed while being read") from exc
        raise StorageError(f"S3 {operation} failed{what}: {code}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 {operation} failed{what}: {type(exc).__name__}") from exc


def _sha256_b64(data: BytesLike) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


class _S3ObjectWriter:
    """The ``ObjectWriter`` handed out by :meth:`S3Storage.writer`.

    Holds at most one part in memory; ``max_buffered`` records the high-water mark (tests
    use it to prove the bound).
    """

    def __init__(self, storage: S3Storage, key: str, metadata: dict[str, str]) -> None:
        self._s3 = storage
        self._key = key
        self._full = storage._full_key(key)
        self._metadata = metadata
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._closed = False
        self.max_buffered = 0

    def write(self, data: BytesLike) -> int:
        if self._closed:
            raise StorageError(f"writer for {self._key!r} is closed")
        view = memoryview(data).cast("B")
        size = len(view)
        limit = self._s3.part_size
        while view:
            take = limit - len(self._buffer)
            self._buffer += view[:take]
            view = view[take:]
            self.max_buffered = max(self.max_buffered, len(self._buffer))
            if len(self._buffer) >= limit:
                self._upload_part()
        return size

    def _upload_part(self) -> None:
        client, bucket = self._s3.client, self._s3.bucket
        if self._upload_id is None:
            with _translated("CreateMultipartUpload", self._key):
                response = client.create_multipart_upload(
                    Bucket=bucket, Key=self._full, Metadata=self._metadata,
                    ChecksumAlgorithm="SHA256",
                )  # fmt: skip
            self._upload_id = str(response["UploadId"])
        number = len(self._parts) + 1
        if number > _MAX_PARTS:
            raise StorageError(f"object {self._key!r} exceeds {_MAX_PARTS} parts")
        checksum = _sha256_b64(self._buffer)
        with _translated("UploadPart", self._key):
            try:
                response = client.upload_part(
                    Bucket=bucket, Key=self._full, UploadId=self._upload_id,
                    PartNumber=number, Body=self._buffer, ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )  # fmt: skip
            except ClientError as exc:
                if _error_code(exc) == "NoSuchUpload":
                    raise self._swept() from exc
                raise
        self._check_echo(response, checksum)
        self._parts.append(
            {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}
        )
        # A fresh buffer instead of clearing in place: botocore may still hold a reference
        # to the old one (e.g. inside a retried request object).
        self._buffer = bytearray()

    def _swept(self) -> StorageError:
        # cleanup_partials() judged this upload abandoned and aborted it.
        return StorageError(f"partial write for {self._key!r} was swept before commit")

    def _check_echo(self, response: Mapping[str, Any], expected: str) -> None:
        echoed = response.get("ChecksumSHA256")
        if echoed is not None and echoed != expected:
            raise StorageError(f"S3 returned a wrong checksum for {self._key!r}")

    def commit(self) -> None:
        self._closed = True
        client, bucket = self._s3.client, self._s3.bucket
        if self._upload_id is None:
            checksum = _sha256_b64(self._buffer)
            with _translated("PutObject", self._key):
                response = client.put_object(
                    Bucket=bucket, Key=self._full, Body=self._buffer,
                    Metadata=self._metadata, ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )  # fmt: skip
            self._check_echo(response, checksum)
            self._buffer = bytearray()
            return
        if self._buffer:
            self._upload_part()
        # S3's object-level checksum of a multipart upload is the SHA-256 of the
        # concatenated part digests, suffixed with the part count ("composite").
        digests = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in self._parts)
        composite = f"{_sha256_b64(digests)}-{len(self._parts)}"
        with _translated("CompleteMultipartUpload", self._key):
            try:
                response = client.complete_multipart_upload(
                    Bucket=bucket, Key=self._full, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )  # fmt: skip
            except ClientError as exc:
                if _error_code(exc) == "NoSuchUpload":
                    raise self._swept() from exc
                raise
        echoed = response.get("ChecksumSHA256")
        if echoed is not None and echoed.split("-")[0] != composite.split("-")[0]:
            raise StorageError(f"S3 returned a wrong checksum for {self._key!r}")
        self._upload_id = None

    def abort(self) -> None:
        """Drop the buffer and abort the multipart upload; never raises (best effort)."""
        self._closed = True
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._s3.client.abort_multipart_upload(
                Bucket=self._s3.bucket, Key=self._full, UploadId=upload_id
            )
        except ClientError as exc:
            if _error_code(exc) != "NoSuchUpload":
                _log.warning(
                    "could not abort multipart upload of %r (%s); cleanup_partials() "
                    "will sweep it", self._key, _error_code(exc),
                )  # fmt: skip
        except BotoCoreError as exc:
            _log.warning(
                "could not abort multipart upload of %r (%s); cleanup_partials() will "
                "sweep it", self._key, type(exc).__name__,
            )  # fmt: skip


class _S3Reader(io.RawIOBase):
    """Read-only, seekable stream over ranged GETs with a small LRU cache of blocks.

    ``readinto`` fills the whole buffer unless EOF is reached, so ``read(n)`` returns
    exactly ``n`` bytes before EOF (``zipfile`` depends on that).
    """

    def __init__(
        self, storage: S3Storage, key: str, size: int, etag: str,
        block_size: int, cache_blocks: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self._s3 = storage
        self._key = key
        self._full = storage._full_key(key)
        self._size = size
        self._etag = etag
        self._block = block_size
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._pos = 0
        self.name = key

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence: {whence!r}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self._size:
            index, offset = divmod(self._pos, self._block)
            block = self._get_block(index)
            chunk = block[offset : offset + len(out) - done]
            out[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._pos += len(chunk)
        return done

    def readall(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            chunk = self.read(max(self._block, self._size - self._pos))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _get_block(self, index: int) -> bytes:
        block = self._cache.get(index)
        if block is not None:
            self._cache.move_to_end(index)
            return block
        start = index * self._block
        end = min(start + self._block, self._size) - 1
        with _translated("GetObject", self._key):
            response = self._s3.client.get_object(
                Bucket=self._s3.bucket, Key=self._full,
                Range=f"bytes={start}-{end}", IfMatch=self._etag,
            )  # fmt: skip
            body = response["Body"]
            try:
                block = cast(bytes, body.read())
            finally:
                body.close()
        if len(block) != end - start + 1:
            raise StorageError(f"short read from S3 for {self._key!r}")
        self._cache[index] = block
        while len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return block

    def close(self) -> None:
        self._cache.clear()
        super().close()


class S3Storage:
    """Storage backend on one S3 bucket, optionally under a key prefix.

    ``client`` is a boto3 S3 client (see :func:`make_client`); its credentials decide
    what this backend may do -- the drop zone and the vault get separate clients, and the
    client-facing role has no ``s3:GetObject`` on the vault bucket.  ``prefix`` (e.g.
    ``"kinko/vault"``) must itself be a valid key; objects are stored as
    ``prefix/key``.  Thread-safe as far as boto3 clients are.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = 8 << 20,
        block_size: int = 4 << 20,
        cache_blocks: int = 2,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise StorageError("invalid S3 bucket name")
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidKeyError as exc:
                raise StorageError(f"invalid S3 key prefix: {prefix!r}") from exc
        if not MIN_PART_SIZE <= part_size <= _MAX_PART_SIZE:
            raise StorageError("part_size must be between 5 MiB and 5 GiB")
        if block_size < 1 or cache_blocks < 1:
            raise StorageError("block_size and cache_blocks must be positive")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self._base = f"{prefix}/" if prefix else ""
        self._block_size = block_size
        self._cache_blocks = cache_blocks
        self._known_versioned = False

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _full_key(self, key: str) -> str:
        # validate_key() rules out "..", empty segments and leading "/", so the joined
        # key can never leave the prefix (S3 keys are not paths, but the prefix is the
        # only confinement IAM policies scoped to "bucket/prefix/*" can rely on).
        return self._base + validate_key(key)

    # -- writing -----------------------------------------------------------------------

    def writer(
        self, key: str, metadata: Mapping[str, str] | None = None
    ) -> AbstractContextManager[ObjectWriter]:
        """See :meth:`storage.base.Storage.writer`.

        Data is buffered up to ``part_size``; the first full part starts a multipart
        upload, smaller objects are sent with one ``PutObject`` at exit.  Key and metadata
        are validated here, before the ``with`` block is entered.
        """
        self._full_key(key)
        meta = validate_metadata(metadata)
        return self._transaction(key, meta)

    @contextmanager
    def _transaction(self, key: str, metadata: dict[str, str]) -> Iterator[ObjectWriter]:
        writer = _S3ObjectWriter(self, key, metadata)
        try:
            yield writer
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def copy_from(self, source: S3Storage, src_key: str, dst_key: str) -> None:
        """Copy ``source``'s object ``src_key`` to ``dst_key`` here, server-side.

        No bytes pass through this process.  The copy runs with *this* backend's client,
        which therefore needs ``s3:GetObject`` on the source (``StoragePermissionError``
        otherwise: fall back to a streamed copy).  Metadata is copied; S3 computes a fresh
        SHA-256 checksum for the new object.  The source is pinned by ETag, so a
        concurrent overwrite of the source fails the copy instead of mixing versions.
        Raises ``ObjectNotFoundError`` if the source is missing.
        """
        src_full, dst_full = source._full_key(src_key), self._full_key(dst_key)
        with _translated("HeadObject", src_key):
            head = self.client.head_object(Bucket=source.bucket, Key=src_full)
        size, etag = int(head["ContentLength"]), str(head["ETag"])
        copy_source = {"Bucket": source.bucket, "Key": src_full}
        if size <= _COPY_OBJECT_LIMIT:
            with _translated("CopyObject", dst_key):
                self.client.copy_object(
                    Bucket=self.bucket, Key=dst_full, CopySource=copy_source,
                    CopySourceIfMatch=etag, MetadataDirective="COPY",
                    ChecksumAlgorithm="SHA256",
                )  # fmt: skip
            return
        part = max(self.part_size, -(-size // _MAX_PARTS))
        with _translated("CreateMultipartUpload", dst_key):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=dst_full, Metadata=dict(head.get("Metadata", {})),
                ChecksumAlgorithm="SHA256",
            )["UploadId"]  # fmt: skip
        try:
            parts = []
            for number, start in enumerate(range(0, size, part), start=1):
                end = min(start + part, size) - 1
                with _translated("UploadPartCopy", dst_key):
                    result = self.client.upload_part_copy(
                        Bucket=self.bucket, Key=dst_full, UploadId=upload_id,
                        PartNumber=number, CopySource=copy_source,
                        CopySourceRange=f"bytes={start}-{end}", CopySourceIfMatch=etag,
                    )["CopyPartResult"]  # fmt: skip
                entry = {"PartNumber": number, "ETag": result["ETag"]}
                if "ChecksumSHA256" in result:
                    entry["ChecksumSHA256"] = result["ChecksumSHA256"]
                parts.append(entry)
            with _translated("CompleteMultipartUpload", dst_key):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=dst_full, UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )  # fmt: skip
        except BaseException:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=dst_full, UploadId=upload_id
                )
            except (ClientError, BotoCoreError):
                _log.warning("could not abort copy upload of %r; sweep will", dst_key)
            raise

    def duplicate(self, src_key: str, dst_key: str) -> bool:
        """See :meth:`storage.base.Storage.duplicate`: a server-side copy in this bucket
        (new bytes: False)."""
        self.copy_from(self, src_key, dst_key)
        return False

    # -- reading -----------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        """See :meth:`storage.base.Storage.open`.

        Returns a seekable stream that fetches ``block_size`` ranges on demand, pinned
        to the object's ETag at open time.  Raises ``ObjectNotFoundError``.
        """
        full = self._full_key(key)
        with _translated("HeadObject", key):
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        reader = _S3Reader(
            self, key, int(head["ContentLength"]), str(head["ETag"]),
            self._block_size, self._cache_blocks,
        )  # fmt: skip
        return cast(BinaryIO, reader)

    def head(self, key: str) -> ObjectInfo:
        """See :meth:`storage.base.Storage.head`.  Raises ``ObjectNotFoundError``."""
        full = self._full_key(key)
        with _translated("HeadObject", key):
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        metadata = {str(k).lower(): str(v) for k, v in head.get("Metadata", {}).items()}
        return ObjectInfo(key=key, size=int(head["ContentLength"]), metadata=metadata)

    def exists(self, key: str) -> bool:
        """See :meth:`storage.base.Storage.exists`.  Permission errors propagate."""
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    # -- listing and deleting ----------------------------------------------------------

    def keys(self, prefix: str = "") -> Iterator[str]:
        """See :meth:`storage.base.Storage.keys`.

        Keys are yielded without the backend prefix; objects under the prefix whose
        names are not valid keys (written by something else) are skipped.
        """
        validate_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        with _translated("ListObjectsV2"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._base + prefix):
                for entry in page.get("Contents", []):
                    rel = str(entry["Key"])[len(self._base) :]
                    if _is_key(rel):
                        yield rel

    def delete(self, key: str) -> None:
        """See :meth:`storage.base.Storage.delete`.

        Unversioned bucket: one ``DeleteObject``.  Versioned or suspended bucket: every
        version and delete marker of exactly this key is deleted, and the listing is
        repeated until it comes back empty, so disposal leaves no copy behind.  If the
        bucket's versioning state cannot be read, the version-aware path is taken.
        """
        full = self._full_key(key)
        if not self._is_versioned():
            with _translated("DeleteObject", key):
                self.client.delete_object(Bucket=self.bucket, Key=full)
            return
        for _ in range(_DELETE_PASSES):
            versions = self._versions_of(full, key)
            if not versions:
                return
            for start in range(0, len(versions), _DELETE_BATCH):
                batch = versions[start : start + _DELETE_BATCH]
                with _translated("DeleteObjects", key):
                    response = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                errors = response.get("Errors", [])
                if errors:
                    code = str(errors[0].get("Code", "unknown"))
                    if code in _DENIED:
                        raise StoragePermissionError(f"S3 DeleteObjects denied for {key!r}")
                    raise StorageError(f"S3 DeleteObjects failed for {key!r}: {code}")
        raise StorageError(f"versions of {key!r} keep reappearing; delete incomplete")

    def _is_versioned(self) -> bool:
        # Versioning can be suspended but never switched off, so "versioned" is sticky.
        if not self._known_versioned:
            try:
                with _translated("GetBucketVersioning"):
                    status = self.client.get_bucket_versioning(Bucket=self.bucket)
            except StoragePermissionError:
                return True  # unknown: take the path that also removes old versions
            if status.get("Status") in ("Enabled", "Suspended"):
                self._known_versioned = True
        return self._known_versioned

    def _versions_of(self, full: str, key: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        paginator = self.client.get_paginator("list_object_versions")
        with _translated("ListObjectVersions", key):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    if entry["Key"] == full:  # the prefix also matches "key-suffix"
                        found.append({"Key": full, "VersionId": str(entry["VersionId"])})
        return found

    def cleanup_partials(self, older_than_seconds: float) -> int:
        """See :meth:`storage.base.Storage.cleanup_partials`.

        Aborts multipart uploads under the prefix whose last activity (initiation or
        newest part) is older than the cutoff, so a slow but live upload is spared.  A
        writer that is still buffering its first part has nothing on the server yet, so
        there is nothing to sweep.  Returns the number of uploads aborted.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        with _translated("ListMultipartUploads"):
            uploads = [
                upload
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self._base)
                for upload in page.get("Uploads", [])
                if upload["Initiated"] <= cutoff
            ]
        for upload in uploads:
            key, upload_id = str(upload["Key"]), str(upload["UploadId"])
            if self._last_part_time(key, upload_id) > cutoff:
                continue
            try:
                with _translated("AbortMultipartUpload", key):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            except StorageError as exc:
                if isinstance(exc.__cause__, ClientError):
                    if _error_code(exc.__cause__) == "NoSuchUpload":
                        continue  # completed or aborted meanwhile
                raise
            aborted += 1
        return aborted

    def _last_part_time(self, key: str, upload_id: str) -> datetime:
        newest = datetime.min.replace(tzinfo=UTC)
        paginator = self.client.get_paginator("list_parts")
        try:
            with _translated("ListParts", key):
                for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                    for part in page.get("Parts", []):
                        newest = max(newest, part["LastModified"])
        except StorageError as exc:
            if isinstance(exc.__cause__, ClientError):
                if _error_code(exc.__cause__) == "NoSuchUpload":
                    return newest
            raise
        return newest


def _is_key(candidate: str) -> bool:
    try:
        validate_key(candidate)
    except InvalidKeyError:
        return False
    return True
