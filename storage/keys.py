"""Key-encryption keys: wrap/unwrap the per-object data keys (DEKs) of envelopes.

Two kinds of key protect kinko data:

* :class:`SymmetricKey` -- the *drop-zone key* held by the server (scheme
  ``aes256gcm-kw-v1``).  Anyone holding it can wrap *and* unwrap.
* :class:`VaultPrivateKey` / :class:`VaultPublicKey` -- an X25519 key pair (scheme
  ``x25519-hkdf-sha256-aesgcm-v1``, modelled on age's X25519 recipient).  The
  client-facing process holds only the public half and therefore cannot decrypt what it
  stored; the private half is loaded only by the office side.

Security invariants: a wrapped DEK is bound to its object id and to the wrapping key id
(moving a wrapped key to another object fails to unwrap); key files are created 0o600
before any byte is written; ``repr`` never shows key material; key ids are one-way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._keyio import hkdf_sha256 as _hkdf
from ._keyio import length_prefixed, read_key_file, write_new_file
from .errors import IntegrityError, KeyMaterialError

__all__ = [
    "DEK_SIZE",
    "KeyUnwrapper",
    "KeyWrapper",
    "SymmetricKey",
    "VaultPrivateKey",
    "VaultPublicKey",
]

DEK_SIZE = 32
_SYM_SCHEME = "aes256gcm-kw-v1"
_X25519_SCHEME = "x25519-hkdf-sha256-aesgcm-v1"
_SYM_FILE_TAG = b"kinko-dropzone-key-v1"
_NONCE_SIZE = 12
_ZERO_NONCE = bytes(_NONCE_SIZE)


class KeyWrapper(Protocol):
    """Anything that can wrap a DEK for one object (local key today, a KMS later)."""

    @property
    def key_id(self) -> str: ...

    @property
    def scheme(self) -> str: ...

    def wrap(self, dek: bytes, object_id: str) -> bytes:
        """Return the wrapped ``dek``, bound to ``object_id`` and this key id."""
        ...


class KeyUnwrapper(Protocol):
    """Anything that can unwrap a DEK; raises ``IntegrityError`` on any failure."""

    @property
    def key_id(self) -> str: ...

    @property
    def scheme(self) -> str: ...

    def unwrap(self, wrapped: bytes, object_id: str) -> bytes:
        """Return the DEK, or raise ``IntegrityError`` (wrong key/object, tampering)."""
        ...


def _check_dek(dek: bytes) -> None:
    if len(dek) != DEK_SIZE:
        raise KeyMaterialError("a data key must be 32 bytes")


class SymmetricKey:
    """The drop-zone key: a 256-bit secret that wraps DEKs with AES-256-GCM.

    The raw key is only ever used as HKDF input: the wrapping key and the public key id
    are derived from it with distinct labels, so neither use can leak into the other.
    Wrapped format: 12-byte random nonce || ciphertext || 16-byte tag (60 bytes).  Random
    nonces are safe far beyond our volume (NIST: up to 2**32 wraps per key).
    """

    scheme: str = _SYM_SCHEME

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise KeyMaterialError("a symmetric key must be 32 bytes")
        if not any(raw):
            raise KeyMaterialError("refusing an all-zero key (uninitialised buffer?)")
        self._raw = raw
        self._aead = AESGCM(_hkdf(raw, b"kinko/" + _SYM_SCHEME.encode()))
        self._key_id = _hkdf(raw, b"kinko/key-id/v1", length=8).hex()

    @classmethod
    def generate(cls) -> SymmetricKey:
        """Return a fresh key from the OS CSPRNG."""
        return cls(os.urandom(32))

    @classmethod
    def from_bytes(cls, raw: bytes) -> SymmetricKey:
        """Build from 32 raw bytes.  Raises ``KeyMaterialError``."""
        return cls(bytes(raw))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SymmetricKey:
        """Load a key file written by :meth:`save`.  Raises ``KeyMaterialError``/``OSError``."""
        blob = read_key_file(path, private=True)
        tag, _, encoded = blob.strip().partition(b" ")
        if tag != _SYM_FILE_TAG:
            raise KeyMaterialError("not a kinko drop-zone key file")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise KeyMaterialError("malformed drop-zone key file") from exc
        return cls(raw)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to a new file with mode 0o600.

        Refuses to overwrite (``FileExistsError``): silently replacing a key would make
        every object wrapped with the old one undecryptable.
        """
        write_new_file(path, _SYM_FILE_TAG + b" " + base64.b64encode(self._raw) + b"\n", 0o600)

    @property
    def key_id(self) -> str:
        """16 hex chars, HKDF-derived: identifies the key without revealing it."""
        return self._key_id

    def _aad(self, object_id: str) -> bytes:
        return length_prefixed(_SYM_SCHEME.encode(), object_id.encode(), self._key_id.encode())

    def wrap(self, dek: bytes, object_id: str) -> bytes:
        """Wrap ``dek`` for ``object_id`` (AAD = scheme, object id, key id)."""
        _check_dek(dek)
        nonce = os.urandom(_NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, dek, self._aad(object_id))

    def unwrap(self, wrapped: bytes, object_id: str) -> bytes:
        """Unwrap; raises ``IntegrityError`` for a wrong key, wrong object id or tampering."""
        if len(wrapped) != _NONCE_SIZE + DEK_SIZE + 16:
            raise IntegrityError("wrapped key has the wrong length")
        try:
            return self._aead.decrypt(
                wrapped[:_NONCE_SIZE], wrapped[_NONCE_SIZE:], self._aad(object_id)
            )
        except InvalidTag:
            raise IntegrityError("cannot unwrap data key (wrong key or object)") from None

    def __repr__(self) -> str:
        return f"SymmetricKey(key_id={self._key_id!r})"


class VaultPublicKey:
    """Public half of the vault key: can wrap, **cannot unwrap** (there is no ``unwrap``).

    Wrapped format: ephemeral X25519 public key (32) || AES-256-GCM(DEK) + tag (48).
    """

    scheme: str = _X25519_SCHEME

    def __init__(self, key: X25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._key_id = hashlib.sha256(b"kinko/vault-key-id/v1" + self._raw).hexdigest()[:16]

    @classmethod
    def from_bytes(cls, raw: bytes) -> VaultPublicKey:
        """Build from the 32-byte raw X25519 public key.  Raises ``KeyMaterialError``."""
        if len(raw) != 32:
            raise KeyMaterialError("an X25519 public key must be 32 bytes")
        return cls(X25519PublicKey.from_public_bytes(bytes(raw)))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VaultPublicKey:
        """Load a PEM (SubjectPublicKeyInfo) file.  Raises ``KeyMaterialError``/``OSError``."""
        try:
            key = serialization.load_pem_public_key(read_key_file(path, private=False))
        except ValueError as exc:
            raise KeyMaterialError("malformed vault public key file") from exc
        if not isinstance(key, X25519PublicKey):
            raise KeyMaterialError("vault public key file does not hold an X25519 key")
        return cls(key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a new PEM file (mode 0o644: public).  Refuses to overwrite."""
        pem = self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_new_file(path, pem, 0o644)

    def to_bytes(self) -> bytes:
        """Return the 32-byte raw public key."""
        return self._raw

    @property
    def key_id(self) -> str:
        """16 hex chars derived from the public key."""
        return self._key_id

    def wrap(self, dek: bytes, object_id: str) -> bytes:
        """Wrap ``dek`` for ``object_id`` so that only the vault private key can unwrap."""
        _check_dek(dek)
        ephemeral = X25519PrivateKey.generate()
        eph_pub = ephemeral.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        try:
            shared = ephemeral.exchange(self._key)
        except ValueError as exc:  # low-order point: OpenSSL refuses the all-zero output
            raise KeyMaterialError("vault public key is a low-order point") from exc
        aead = _x25519_aead(shared, eph_pub, self._raw, object_id)
        return eph_pub + aead.encrypt(_ZERO_NONCE, dek, _x25519_aad(object_id, self._key_id))

    def __repr__(self) -> str:
        return f"VaultPublicKey(key_id={self._key_id!r})"


def _x25519_aad(object_id: str, key_id: str) -> bytes:
    # Redundant with the HKDF inputs (which already bind recipient and object), but keeps
    # both schemes binding the same triple: scheme, object id, key id.
    return length_prefixed(_X25519_SCHEME.encode(), object_id.encode(), key_id.encode())


def _x25519_aead(shared: bytes, eph_pub: bytes, recipient: bytes, object_id: str) -> AESGCM:
    """Derive the single-use wrap key (age-style); rejects an all-zero shared secret."""
    # An all-zero secret means the peer sent a low-order point: the "secret" would be
    # known to everyone.  cryptography already refuses it; this is belt and braces.
    if hmac.compare_digest(shared, bytes(32)):
        raise IntegrityError("X25519 shared secret is all-zero")
    info = length_prefixed(_X25519_SCHEME.encode(), object_id.encode())
    # The wrap key is fresh per wrap (fresh ephemeral key), so the zero nonce is never
    # reused under one key -- exactly age's argument.
    return AESGCM(_hkdf(shared, info, salt=eph_pub + recipient))


class VaultPrivateKey:
    """Private half of the vault key (office side only).  ``key_id`` equals the public one."""

    scheme: str = _X25519_SCHEME

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = VaultPublicKey(key.public_key())

    @classmethod
    def generate(cls) -> VaultPrivateKey:
        """Return a fresh key pair from the OS CSPRNG."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, password: bytes | None = None
    ) -> VaultPrivateKey:
        """Load a PKCS#8 PEM file (optionally password-protected)."""
        try:
            key = serialization.load_pem_private_key(
                read_key_file(path, private=True), password=password
            )
        except (ValueError, TypeError) as exc:
            raise KeyMaterialError("malformed vault private key file or bad password") from exc
        if not isinstance(key, X25519PrivateKey):
            raise KeyMaterialError("vault private key file does not hold an X25519 key")
        return cls(key)

    def save(self, path: str | os.PathLike[str], *, password: bytes | None = None) -> None:
        """Write a new PKCS#8 PEM file with mode 0o600 (encrypted if ``password``).

        Refuses to overwrite (``FileExistsError``).
        """
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        write_new_file(path, pem, 0o600)

    def public_key(self) -> VaultPublicKey:
        """Return the public half (safe to hand to the client-facing process)."""
        return self._public

    @property
    def key_id(self) -> str:
        """Same as ``public_key().key_id``."""
        return self._public.key_id

    def unwrap(self, wrapped: bytes, object_id: str) -> bytes:
        """Unwrap a DEK wrapped by the public key; raises ``IntegrityError`` on any failure."""
        if len(wrapped) != 32 + DEK_SIZE + 16:
            raise IntegrityError("wrapped key has the wrong length")
        eph_pub = wrapped[:32]
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        except ValueError:
            raise IntegrityError("invalid ephemeral key in wrapped data key") from None
        aead = _x25519_aead(shared, eph_pub, self._public.to_bytes(), object_id)
        try:
            return aead.decrypt(_ZERO_NONCE, wrapped[32:], _x25519_aad(object_id, self.key_id))
        except InvalidTag:
            raise IntegrityError("cannot unwrap data key (wrong key or object)") from None

    def __repr__(self) -> str:
        return f"VaultPrivateKey(key_id={self.key_id!r})"
