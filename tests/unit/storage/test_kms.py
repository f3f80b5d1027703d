"""KMS key custody against a real moto server: wrap/unwrap, binding, rotation with key
rings, header re-writing (local and S3), and IAM role separation (Encrypt vs Decrypt)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3server import MotoServer

from storage import (
    IntegrityError,
    KeyMaterialError,
    LocalStorage,
    StorageError,
    StoragePermissionError,
    SymmetricKey,
    VaultPrivateKey,
    open_envelope,
    peek_header,
    put_bytes,
    read_bytes,
    rewrap_header,
    seal,
)
from storage.base import Storage
from storage.kms import (
    KMS_SCHEME,
    KeyRing,
    KmsError,
    KmsUnwrapper,
    KmsWrapper,
    is_kms_wrapped,
    resolve_kms_key,
    rewrite_detached_header,
    wrapped_key_arn,
)
from storage.s3 import MIN_PART_SIZE, S3Storage

DATA = os.urandom(3 * 65536 + 123)


@pytest.fixture(scope="module")
def kms(moto_server: MotoServer) -> Any:
    return moto_server.boto_client("kms")


@pytest.fixture
def key_arn(kms: Any) -> str:
    return str(kms.create_key()["KeyMetadata"]["Arn"])


def _seal_bytes(wrapper: Any, oid: str, data: bytes = DATA, *,
                embed: bool = True) -> tuple[bytes, bytes]:
    out = io.BytesIO()

    class Sink:
        def write(self, b: Any) -> int:
            return out.write(b)

    with seal(Sink(), wrapper, oid, embed_key=embed) as w:  # type: ignore[arg-type]
        w.write(data)
    return out.getvalue(), w.wrapped_key


def _open(blob: bytes, oid: str, unwrapper: Any, wrapped: bytes | None = None) -> bytes:
    return open_envelope(io.BytesIO(blob), oid, unwrapper=unwrapper, wrapped_key=wrapped).read()


def test_kms_wrap_and_unwrap_round_trip(kms: Any, key_arn: str) -> None:
    wrapper = KmsWrapper(kms, key_arn)
    blob, wrapped = _seal_bytes(wrapper, "dz/1")
    header = peek_header(io.BytesIO(blob))
    assert header.wrap == KMS_SCHEME == "aws-kms-v1"
    assert header.key_id == key_arn.rsplit("/", 1)[1].replace("-", "")
    assert len(header.key_id) == 32
    assert is_kms_wrapped(wrapped) and wrapped_key_arn(wrapped) == key_arn
    assert DATA[:64] not in blob
    ring = KeyRing(None, [KmsUnwrapper(kms)])
    assert _open(blob, "dz/1", ring) == DATA
    # Detached: only the wrapped key from elsewhere opens it.
    blob2, wrapped2 = _seal_bytes(wrapper, "vault/2", embed=False)
    assert peek_header(io.BytesIO(blob2)).detached
    assert _open(blob2, "vault/2", ring, wrapped2) == DATA
    assert not hasattr(wrapper, "unwrap")  # the encrypting side has no way back


def test_the_wrapped_key_is_bound_to_its_object(kms: Any, key_arn: str) -> None:
    wrapper = KmsWrapper(kms, key_arn)
    wrapped = wrapper.wrap(b"k" * 32, "vault/a")
    unwrapper = KmsUnwrapper(kms)
    assert unwrapper.unwrap(wrapped, "vault/a") == b"k" * 32
    with pytest.raises(IntegrityError):  # encryption context differs
        unwrapper.unwrap(wrapped, "vault/b")
    flipped = bytearray(wrapped)
    flipped[-5] ^= 1
    with pytest.raises(IntegrityError):
        unwrapper.unwrap(bytes(flipped), "vault/a")
    with pytest.raises(IntegrityError):
        unwrapper.unwrap(b"KKMS\x01\x00\x05short", "vault/a")


def test_a_blob_claiming_another_key_is_refused(kms: Any, key_arn: str) -> None:
    other = str(kms.create_key()["KeyMetadata"]["Arn"])
    wrapped = KmsWrapper(kms, key_arn).wrap(b"k" * 32, "vault/a")
    arn = key_arn.encode()
    forged = wrapped.replace(arn, other.encode())
    assert forged != wrapped
    with pytest.raises(StorageError):  # KMS: the ciphertext is not under the named key
        KmsUnwrapper(kms).unwrap(forged, "vault/a")


def test_resolve_fails_closed(kms: Any, key_arn: str) -> None:
    kms.create_alias(AliasName=f"alias/kinko-{uuid.uuid4().hex[:8]}", TargetKeyId=key_arn)
    alias = kms.list_aliases(KeyId=key_arn)["Aliases"][0]["AliasName"]
    assert resolve_kms_key(kms, alias).arn == key_arn
    assert KmsWrapper(kms, alias).arn == key_arn
    kms.disable_key(KeyId=key_arn.rsplit("/", 1)[1])  # moto: DisableKey wants the id
    with pytest.raises(KeyMaterialError):
        resolve_kms_key(kms, key_arn)
    with pytest.raises(KmsError):
        resolve_kms_key(kms, str(uuid.uuid4()))
    with pytest.raises(KeyMaterialError):
        KmsWrapper(kms, key_arn).wrap(b"short", "x")


def test_rotation_key_ring_opens_old_objects(kms: Any, moto_server: MotoServer) -> None:
    """Objects under the file key, KMS key A and KMS key B all open with one ring;
    new objects use B.  After rewrap_header and deleting A, the re-wrapped object still
    opens and the one left under A does not (the deletion is real)."""
    stack = f"k{uuid.uuid4().hex[:8]}"
    key_a = moto_server.create_kms_key(stack)
    key_b = str(kms.create_key()["KeyMetadata"]["Arn"])
    file_key = SymmetricKey.generate()
    old_file, _ = _seal_bytes(file_key, "dz/f")
    old_a, _ = _seal_bytes(KmsWrapper(kms, key_a), "dz/a")
    ring = KeyRing(KmsWrapper(kms, key_b), [KmsUnwrapper(kms), file_key])
    new_b, _ = _seal_bytes(ring, "dz/b")
    assert peek_header(io.BytesIO(new_b)).key_id == KmsWrapper(kms, key_b).key_id
    for blob, oid in ((old_file, "dz/f"), (old_a, "dz/a"), (new_b, "dz/b")):
        assert _open(blob, oid, ring) == DATA
    with pytest.raises(IntegrityError):  # a ring without the file key
        _open(old_file, "dz/f", KeyRing(None, [KmsUnwrapper(kms)]))

    header = peek_header(io.BytesIO(old_a))
    new_header, _ = rewrap_header(header, ring, ring.wrapper)
    moved = new_header + old_a[header.size:]
    assert moved[-1000:] == old_a[-1000:]  # the payload did not change
    copy_under_a = old_a
    moto_server.delete_kms_key(stack)
    assert _open(moved, "dz/a", ring) == DATA
    with pytest.raises(StorageError):
        _open(copy_under_a, "dz/a", ring)


def test_key_ring_dispatches_detached_keys_by_layout(kms: Any, key_arn: str) -> None:
    vault = VaultPrivateKey.generate()
    ring = KeyRing(None, [KmsUnwrapper(kms), vault])
    x_blob, x_wrapped = _seal_bytes(vault.public_key(), "vault/x", embed=False)
    k_blob, k_wrapped = _seal_bytes(KmsWrapper(kms, key_arn), "vault/k", embed=False)
    assert len(x_wrapped) == 80 and not is_kms_wrapped(x_wrapped)
    assert _open(x_blob, "vault/x", ring, x_wrapped) == DATA
    assert _open(k_blob, "vault/k", ring, k_wrapped) == DATA
    with pytest.raises(IntegrityError):  # no X25519 key in this ring
        _open(x_blob, "vault/x", KeyRing(None, [KmsUnwrapper(kms)]), x_wrapped)
    with pytest.raises(IntegrityError):  # a wrap-only ring (the client app's)
        _open(k_blob, "vault/k", KeyRing(KmsWrapper(kms, key_arn), []), k_wrapped)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, moto_server: MotoServer,
          s3_client: Any) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "vault")
    bucket = moto_server.new_bucket(s3_client, versioned=True)
    return S3Storage(s3_client, bucket, "vault", part_size=MIN_PART_SIZE)


def test_rewrite_detached_header_copies_the_payload_verbatim(
        store: Storage, kms: Any, key_arn: str) -> None:
    old_key = VaultPrivateKey.generate()
    blob, wrapped = _seal_bytes(old_key.public_key(), "vault/u.1", embed=False)
    put_bytes(store, "vault/u.1", blob, {"created": "1"})
    old_sha = hashlib.sha256(blob).hexdigest()
    target = KmsWrapper(kms, key_arn)
    seen: list[str] = []

    # A digest that matches neither the old nor the new object: nothing is written.
    with pytest.raises(IntegrityError):
        rewrite_detached_header(store, "vault/u.1", "vault/u.1", target.key_id, KMS_SCHEME,
                                "0" * 64, seen.append)
    assert read_bytes(store, "vault/u.1") == blob and not seen

    # A crash just before the swap (after the new digest was recorded): old object stays.
    def crash(digest: str) -> None:
        seen.append(digest)
        raise OSError("simulated crash before the swap")

    with pytest.raises(OSError):
        rewrite_detached_header(store, "vault/u.1", "vault/u.1", target.key_id, KMS_SCHEME,
                                old_sha, crash)
    assert read_bytes(store, "vault/u.1") == blob
    recorded = seen[-1]
    # The next run is given the recorded (new) digest and accepts the old object.
    new_sha = rewrite_detached_header(store, "vault/u.1", "vault/u.1", target.key_id,
                                      KMS_SCHEME, recorded, seen.append)
    assert new_sha == recorded
    stored = read_bytes(store, "vault/u.1")
    assert hashlib.sha256(stored).hexdigest() == new_sha
    assert store.head("vault/u.1").metadata == {"created": "1"}
    header = peek_header(io.BytesIO(stored))
    old_header = peek_header(io.BytesIO(blob))
    assert (header.key_id, header.wrap, header.detached) == (target.key_id, KMS_SCHEME, True)
    assert stored[header.size:] == blob[old_header.size:]
    # Either object opens with the authoritative (database) wrapped key.
    dek = old_key.unwrap(wrapped, "vault/u.1")
    new_wrapped = target.wrap(dek, "vault/u.1")
    ring = KeyRing(None, [KmsUnwrapper(kms), old_key])
    assert _open(stored, "vault/u.1", ring, new_wrapped) == DATA
    assert _open(stored, "vault/u.1", ring, wrapped) == DATA
    with pytest.raises(IntegrityError):  # an embedded envelope is refused
        put_bytes(store, "dz/e", _seal_bytes(old_key.public_key(), "dz/e")[0])
        rewrite_detached_header(store, "dz/e", "dz/e", target.key_id, KMS_SCHEME,
                                "0" * 64, seen.append)


# -- IAM: the client-facing role can encrypt for the vault, never decrypt ---------------

ENCRYPT_ONLY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"}]}
DECRYPT = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"}]}


@pytest.fixture(scope="module")
def iam_kms() -> Iterator[tuple[MotoServer, str, dict[str, dict[str, str]]]]:
    with MotoServer() as server:
        arn = str(server.boto_client("kms").create_key()["KeyMetadata"]["Arn"])
        iam = server.boto_client("iam")
        creds: dict[str, dict[str, str]] = {}
        for name, policy in (("client", ENCRYPT_ONLY), ("office", DECRYPT)):
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="kms",
                                PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            creds[name] = {"aws_access_key_id": key["AccessKeyId"],
                           "aws_secret_access_key": key["SecretAccessKey"]}
        server.set_auth(enforce=True)
        try:
            yield server, arn, creds
        finally:
            server.set_auth(enforce=False)


def test_encrypt_only_role_cannot_unwrap(
        iam_kms: tuple[MotoServer, str, dict[str, dict[str, str]]]) -> None:
    server, arn, creds = iam_kms
    client_kms = server.boto_client("kms", **creds["client"])
    office_kms = server.boto_client("kms", **creds["office"])
    wrapped = KmsWrapper(client_kms, arn).wrap(b"d" * 32, "vault/u.1")
    with pytest.raises(StoragePermissionError):
        KmsUnwrapper(client_kms).unwrap(wrapped, "vault/u.1")
    assert KmsUnwrapper(office_kms).unwrap(wrapped, "vault/u.1") == b"d" * 32
    with pytest.raises(StoragePermissionError):  # the office role cannot encrypt
        KmsWrapper(office_kms, arn).wrap(b"d" * 32, "vault/u.2")
    stranger = server.boto_client("kms", aws_access_key_id="AKIAUNKNOWN000000000")
    with pytest.raises(KmsError):
        resolve_kms_key(stranger, arn)


def test_kms_unreachable_is_not_an_integrity_error(kms: Any, key_arn: str) -> None:
    """A KMS outage must never look like a damaged object (that would refuse an upload
    for good): it is a KmsError, and the scan is retried."""
    import boto3
    from botocore.config import Config
    from s3server import DUMMY_CREDENTIALS, free_port

    wrapped = KmsWrapper(kms, key_arn).wrap(b"d" * 32, "dz/1")
    down = boto3.Session(**DUMMY_CREDENTIALS).client(
        "kms", endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1))
    with pytest.raises(KmsError) as info:
        KmsUnwrapper(down).unwrap(wrapped, "dz/1")
    assert not isinstance(info.value, IntegrityError)
    with pytest.raises(KmsError):
        KmsWrapper(down, resolve_kms_key(kms, key_arn)).wrap(b"d" * 32, "dz/2")
