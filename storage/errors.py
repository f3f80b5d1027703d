"""Exception hierarchy of the ``storage`` package.

Every exception raised on purpose by this package derives from :class:`StorageError`, so
callers can catch the whole package with one ``except`` clause.  Some classes also derive
from a builtin (``FileNotFoundError``, ``ValueError``) so that generic code that only knows
the builtin keeps working.

Security invariant: exception messages never contain key material, plaintext or
client-supplied file names -- only object keys (generated ids), key ids and sizes.
"""

from __future__ import annotations

__all__ = [
    "IntegrityError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "KeyMaterialError",
    "ObjectNotFoundError",
    "StorageError",
    "StoragePermissionError",
]


class StorageError(Exception):
    """Root of every error raised by the ``storage`` package."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The requested object does not exist (or is not a committed object)."""


class StoragePermissionError(StorageError, PermissionError):
    """The backend refused the operation for lack of permission (S3 ``AccessDenied``/403).

    Expected by design in one place: the client-facing role may write to the vault bucket
    but never read it.  Anywhere else it signals a deployment error (wrong credentials or
    policy), never a missing object.
    """


class InvalidKeyError(StorageError, ValueError):
    """An object key does not satisfy :func:`storage.base.validate_key`.

    Note: "key" here is the *object key* (the storage path), not a cryptographic key.
    """


class InvalidMetadataError(StorageError, ValueError):
    """Object metadata is not a small mapping of portable ASCII strings."""


class KeyMaterialError(StorageError, ValueError):
    """Cryptographic key material is malformed (wrong length, wrong type, bad key file)."""


class IntegrityError(StorageError):
    """An envelope failed decryption or verification.

    Raised for tampering, truncation, reordering, duplication, trailing data, a wrong key,
    a wrong object id or a malformed header.  The message is deliberately coarse: an
    attacker probing the format learns nothing useful from it, and the operator only needs
    to know that the object must not be trusted.
    """
