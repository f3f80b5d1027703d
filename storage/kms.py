"""Key custody in AWS KMS: data keys wrapped by a KMS key, and key rings for rotation.

Scheme ``aws-kms-v1``.  The envelope's fresh data key (DEK) is sent to ``kms:Encrypt``
under a symmetric KMS key with the encryption context
``{"kinko:object": <object id>, "kinko:scheme": "aws-kms-v1"}``; unwrapping calls
``kms:Decrypt`` with the same context and the key's ARN as ``KeyId``.  The KMS key is
named in the wrapped bytes, so any KMS-wrapped DEK names the key that can open it::

    wrapped = b"KKMS" | 0x01 | u16be len(arn) | key ARN (ASCII) | KMS CiphertextBlob

(never 60 or 80 bytes long, so it cannot be mistaken for a drop-zone key's 60-byte or
an X25519 vault key's 80-byte wrapped key; :class:`KeyRing` dispatches on that).

The key id (``kid``) of a KMS key is its KMS key id without dashes (32 lowercase hex
characters; ``mrk-`` multi-Region keys drop the prefix): it names the key in headers,
in ``uploads.vault_key_id`` and in the handling log, and it never contains the account
number that an ARN carries.

Role separation: :class:`KmsWrapper` can only wrap (it has no ``unwrap``; the role's
IAM policy grants ``kms:Encrypt`` and ``kms:DescribeKey`` only), :class:`KmsUnwrapper`
can only unwrap (``kms:Decrypt``).  The guard is IAM: a process that was given no
``kms:Decrypt`` permission cannot open what it wrapped, whatever its code does.

Errors: a refused or failed unwrap of a damaged/foreign wrapped key is
``IntegrityError``; KMS being unreachable, throttling, refusing access or the key being
disabled is :class:`KmsError` (a ``StorageError``, *not* an ``IntegrityError``: the
object is fine and a later attempt may succeed).  Nothing here logs key material.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import _format as fmt
from ._format import Header
from .base import Storage
from .errors import IntegrityError, KeyMaterialError, StorageError, StoragePermissionError
from .keys import DEK_SIZE, KeyUnwrapper, KeyWrapper

__all__ = [
    "KMS_SCHEME",
    "DataKeyring",
    "KeyRing",
    "KmsError",
    "KmsKeyRef",
    "KmsUnwrapper",
    "KmsWrapper",
    "header_of",
    "is_kms_wrapped",
    "make_kms_client",
    "resolve_kms_key",
    "rewrite_detached_header",
    "wrapped_key_arn",
]

KMS_SCHEME = "aws-kms-v1"
_MAGIC = b"KKMS\x01"
_ARN_RE = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]{1,64}")
_LOCAL_WRAPPED_SIZES = (60, 80)  # SymmetricKey, VaultPublicKey
_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
                     "InvalidSignatureException", "ExpiredTokenException", "403"})
_CORRUPT = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})

KmsClient = Any  # boto3 clients are generated at run time


class KmsError(StorageError):
    """KMS could not be used (unreachable, throttled, access refused, key disabled)."""


class DataKeyring(KeyWrapper, KeyUnwrapper, Protocol):
    """Wraps new DEKs with one key and unwraps what any of its keys wrapped."""


def make_kms_client(*, profile: str | None = None, endpoint_url: str | None = None) -> KmsClient:
    """A boto3 KMS client: boto3's usual chain (``AWS_PROFILE``, ``AWS_ENDPOINT_URL_KMS``,
    instance roles...) unless ``profile``/``endpoint_url`` are given.  Standard retries
    (exponential backoff on throttling and 5xx).  Raises :class:`KmsError`."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    config = Config(retries={"mode": "standard", "total_max_attempts": 5},
                    connect_timeout=5, read_timeout=20)
    try:
        session = boto3.Session(profile_name=profile) if profile else boto3.Session()
        return session.client("kms", endpoint_url=endpoint_url, config=config)
    except BotoCoreError as exc:  # e.g. ProfileNotFound, no region: names no secret
        raise KmsError(f"cannot build a KMS client: {exc}") from exc


def _call(operation: str, fn: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a KMS operation; translate errors (the server's text stays on __cause__)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(fn(**kwargs))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        if code in _CORRUPT:
            raise IntegrityError("cannot unwrap data key (wrong key, object or blob)") from exc
        if code in _DENIED:
            raise _KmsDenied(f"KMS refused {operation} ({code})") from exc
        raise KmsError(f"KMS {operation} failed ({code})") from exc
    except BotoCoreError as exc:
        raise KmsError(f"KMS {operation} failed ({type(exc).__name__})") from exc


class _KmsDenied(KmsError, StoragePermissionError):
    """KMS said no: this role may not use this key this way."""


def kid_of(key_id: str) -> str:
    """The kinko key id of a KMS key id: lowercase hex, no dashes, no ``mrk-`` prefix."""
    raw = key_id.lower().removeprefix("mrk-").replace("-", "")
    if not re.fullmatch(r"[0-9a-f]{16,64}", raw):
        raise KeyMaterialError("unexpected KMS key id")
    return raw


@dataclass(frozen=True)
class KmsKeyRef:
    """A resolved KMS key: its ARN and the kinko key id derived from it."""

    arn: str

    @property
    def key_id(self) -> str:
        return kid_of(self.arn.rsplit("/", 1)[1])


def resolve_kms_key(client: KmsClient, key: str) -> KmsKeyRef:
    """Resolve a key id, ARN, alias name or alias ARN to the key's ARN (``kms:DescribeKey``).

    Fails closed: the key must be enabled, symmetric and for encryption, otherwise
    ``KeyMaterialError`` (``KmsError`` when KMS cannot be asked).  Resolving once at
    start means an alias that is re-pointed later takes effect at the next restart,
    and every object a process wraps names the same key.
    """
    meta = _call("DescribeKey", client.describe_key, KeyId=key)["KeyMetadata"]
    if meta.get("KeyState") != "Enabled":
        raise KeyMaterialError(f"KMS key {meta.get('KeyId')} is {meta.get('KeyState')}")
    if meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT" or meta.get(
            "KeySpec", meta.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT")) \
            != "SYMMETRIC_DEFAULT":
        raise KeyMaterialError("the KMS key must be a symmetric encryption key")
    arn = str(meta.get("Arn", ""))
    if not _ARN_RE.fullmatch(arn):
        raise KeyMaterialError("KMS returned an unexpected key ARN")
    return KmsKeyRef(arn)


def _context(object_id: str) -> dict[str, str]:
    return {"kinko:object": object_id, "kinko:scheme": KMS_SCHEME}


def _pack(arn: str, blob: bytes) -> bytes:
    raw = arn.encode("ascii")
    packed = _MAGIC + len(raw).to_bytes(2, "big") + raw + blob
    if len(packed) in _LOCAL_WRAPPED_SIZES:  # impossible with real ARNs; never ambiguous
        raise KeyMaterialError("KMS wrapped key has an ambiguous length")
    return packed


def _unpack(wrapped: bytes) -> tuple[str, bytes]:
    if not is_kms_wrapped(wrapped):
        raise IntegrityError("not a KMS-wrapped data key")
    size = int.from_bytes(wrapped[len(_MAGIC):len(_MAGIC) + 2], "big")
    start = len(_MAGIC) + 2
    try:
        arn = wrapped[start:start + size].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("malformed KMS-wrapped data key") from None
    blob = wrapped[start + size:]
    if not _ARN_RE.fullmatch(arn) or not blob:
        raise IntegrityError("malformed KMS-wrapped data key")
    return arn, blob


def is_kms_wrapped(wrapped: bytes) -> bool:
    """True if ``wrapped`` is in the ``aws-kms-v1`` layout (not proof it will unwrap)."""
    return (len(wrapped) not in _LOCAL_WRAPPED_SIZES and len(wrapped) > len(_MAGIC) + 2
            and wrapped.startswith(_MAGIC))


def wrapped_key_arn(wrapped: bytes) -> str | None:
    """The ARN of the KMS key that wrapped ``wrapped``; ``None`` for a local key's."""
    if not is_kms_wrapped(wrapped):
        return None
    return _unpack(wrapped)[0]


class KmsWrapper:
    """Wraps DEKs under one KMS key (``kms:Encrypt``).  Has **no** ``unwrap``.

    ``key`` is resolved with ``kms:DescribeKey`` at the first use (or :meth:`resolve`),
    so a process that never wraps never calls KMS.
    """

    scheme: str = KMS_SCHEME

    def __init__(self, client: KmsClient, key: str | KmsKeyRef) -> None:
        self._client = client
        self._key = key
        self._ref: KmsKeyRef | None = key if isinstance(key, KmsKeyRef) else None

    def resolve(self) -> KmsKeyRef:
        """Resolve the configured key now (fail closed at start)."""
        if self._ref is None:
            assert isinstance(self._key, str)
            self._ref = resolve_kms_key(self._client, self._key)
        return self._ref

    @property
    def arn(self) -> str:
        return self.resolve().arn

    @property
    def key_id(self) -> str:
        return self.resolve().key_id

    def wrap(self, dek: bytes, object_id: str) -> bytes:
        """Encrypt ``dek`` under the KMS key, bound to ``object_id`` by the context."""
        if len(dek) != DEK_SIZE:
            raise KeyMaterialError("a data key must be 32 bytes")
        ref = self.resolve()
        out = _call("Encrypt", self._client.encrypt, KeyId=ref.arn, Plaintext=dek,
                    EncryptionContext=_context(object_id))
        if out.get("KeyId") != ref.arn:  # KMS used another key than the one we named
            raise KmsError("KMS encrypted under an unexpected key")
        return _pack(ref.arn, bytes(out["CiphertextBlob"]))

    def __repr__(self) -> str:
        return f"KmsWrapper(key={self._ref.key_id if self._ref else self._key!r})"


class KmsUnwrapper:
    """Unwraps DEKs wrapped by any KMS key this role may use (``kms:Decrypt``).

    The KMS key is taken from the wrapped bytes and passed as ``KeyId``, so KMS refuses
    a blob that claims one key but was made by another.  ``key_id`` is ``"*"``: this
    object is chosen by scheme (see :class:`KeyRing`), never by key id.
    """

    scheme: str = KMS_SCHEME
    key_id: str = "*"

    def __init__(self, client: KmsClient) -> None:
        self._client = client

    def unwrap(self, wrapped: bytes, object_id: str) -> bytes:
        arn, blob = _unpack(wrapped)
        out = _call("Decrypt", self._client.decrypt, CiphertextBlob=blob, KeyId=arn,
                    EncryptionContext=_context(object_id))
        dek = bytes(out.get("Plaintext", b""))
        if out.get("KeyId") != arn or len(dek) != DEK_SIZE:
            raise IntegrityError("cannot unwrap data key (wrong key or object)")
        return dek

    def __repr__(self) -> str:
        return "KmsUnwrapper()"


class KeyRing:
    """One key for new objects, several for old ones: what makes rotation possible.

    * ``wrap``/``key_id``/``scheme`` are those of ``wrapper`` (``None``: cannot wrap).
    * ``unwrap(wrapped, oid)`` (detached envelopes: the database copy is authoritative)
      picks by the wrapped key's layout: KMS layout -> the KMS unwrapper; 80 bytes ->
      X25519 vault keys; 60 bytes -> drop-zone keys.
    * ``unwrapper_for(key_id, scheme)`` (embedded envelopes, called by ``open_envelope``
      with the header's ``kid``/``wrap``) returns the key the header names.

    A ring with no unwrappers is wrap-only: the client-facing process gets such a ring
    for a KMS drop zone, so it holds no way to decrypt what it stored.
    """

    def __init__(self, wrapper: KeyWrapper | None, unwrappers: Iterable[KeyUnwrapper]) -> None:
        self._wrapper = wrapper
        self._unwrappers: Sequence[KeyUnwrapper] = tuple(unwrappers)

    @property
    def wrapper(self) -> KeyWrapper:
        if self._wrapper is None:
            raise KeyMaterialError("this key ring cannot wrap")
        return self._wrapper

    @property
    def unwrappers(self) -> Sequence[KeyUnwrapper]:
        return self._unwrappers

    @property
    def key_id(self) -> str:
        return self.wrapper.key_id

    @property
    def scheme(self) -> str:
        return self.wrapper.scheme

    def wrap(self, dek: bytes, object_id: str) -> bytes:
        return self.wrapper.wrap(dek, object_id)

    def unwrapper_for(self, key_id: str, scheme: str) -> KeyUnwrapper:
        for candidate in self._unwrappers:
            if candidate.scheme == scheme and candidate.scheme == KMS_SCHEME:
                return candidate
            if candidate.scheme == scheme and candidate.key_id == key_id:
                return candidate
        raise IntegrityError("envelope was wrapped for a different key")

    def unwrap(self, wrapped: bytes, object_id: str) -> bytes:
        kms = is_kms_wrapped(wrapped)
        tried = False
        for candidate in self._unwrappers:
            if (candidate.scheme == KMS_SCHEME) != kms:
                continue
            tried = True
            try:
                return candidate.unwrap(wrapped, object_id)
            except IntegrityError:
                continue  # wrong local key of the right kind: try the next one
        raise IntegrityError("cannot unwrap data key (no matching key)" if tried
                             else "cannot unwrap data key (this process holds no such key)")

    def __repr__(self) -> str:
        return f"KeyRing(wrapper={self._wrapper!r}, unwrappers={list(self._unwrappers)!r})"


# -- re-wrapping stored objects ---------------------------------------------------------

_CHUNK = 1 << 20


def rewrite_detached_header(
    storage: Storage, key: str, object_id: str, new_key_id: str, new_scheme: str,
    expected_sha256: str, before_commit: Callable[[str], None],
) -> str:
    """Replace the header of a *detached* envelope so it names a new key; the payload is
    copied byte for byte (never decrypted).  Returns the new object's SHA-256.

    Copy -> verify -> swap: the new object is streamed to ``storage.writer(key)`` (the
    backend commits it atomically: ``os.replace`` / S3 ``PutObject``), then read back and
    hashed.  Before the commit, the whole old object must hash to ``expected_sha256``
    -- or the *new* object must (a previous run recorded the new hash, then stopped
    before its commit) -- otherwise nothing is written (``IntegrityError``).
    ``before_commit(new_sha256)`` runs after that check and before the swap: the caller
    records the new hash there, so that a crash at any point leaves a state the next run
    recognises.  Detached headers hold no key material (their ``kid``/``wrap`` are hints,
    the database's wrapped key is authoritative), so the old and the new object are both
    readable with the current wrapped key.
    """
    new_header = fmt.encode_header(object_id, new_key_id, new_scheme, None)
    info = storage.head(key)
    source = storage.open(key)
    try:
        header = fmt.parse_header(source)
        if header.object_id != object_id:
            raise IntegrityError("envelope belongs to a different object")
        if not header.detached:
            raise IntegrityError("not a detached envelope: use rewrap_header")
        # parse_header accepts only the canonical encoding, so this is the exact byte string.
        old_hash = hashlib.sha256(fmt.encode_header(header.object_id, header.key_id,
                                                    header.wrap, None))
        new_hash = hashlib.sha256(new_header)
        with storage.writer(key, dict(info.metadata)) as out:
            out.write(new_header)
            while chunk := fmt.read_exact(source, _CHUNK):
                old_hash.update(chunk)
                new_hash.update(chunk)
                out.write(chunk)
            digest = new_hash.hexdigest()
            if expected_sha256 not in (old_hash.hexdigest(), digest):
                raise IntegrityError("stored object differs from the recorded digest")
            before_commit(digest)
    finally:
        source.close()
    check = hashlib.sha256()
    with contextlib.closing(storage.open(key)) as written:
        while chunk := written.read(_CHUNK):
            check.update(chunk)
    if check.hexdigest() != digest:
        raise IntegrityError("re-written object differs from what was written")
    return digest


def header_of(storage: Storage, key: str) -> Header:
    """Parse only the header of a stored envelope (a few hundred bytes are read)."""
    with contextlib.closing(storage.open(key)) as source:
        return fmt.parse_header(source)
