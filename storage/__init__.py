"""kinko storage: object backends and envelope encryption at rest.

Framework-free by design: nothing here imports Flask or ``portal`` or reads the
environment; every setting arrives as a plain argument.
"""

from typing import Any

from .base import (
    ObjectInfo,
    ObjectWriter,
    Storage,
    put_bytes,
    read_bytes,
    validate_key,
    validate_metadata,
)
from .envelope import (
    SEGMENT_SIZE,
    EnvelopeReader,
    EnvelopeWriter,
    Header,
    open_envelope,
    peek_header,
    rewrap_header,
    seal,
)
from .errors import (
    IntegrityError,
    InvalidKeyError,
    InvalidMetadataError,
    KeyMaterialError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
)
from .keys import KeyUnwrapper, KeyWrapper, SymmetricKey, VaultPrivateKey, VaultPublicKey
from .local import LocalStorage
from .memory import MemoryStorage


def __getattr__(name: str) -> Any:
    # boto3 costs ~10 MB per process: load it only where S3 is used.
    if name in ("S3Storage", "make_client"):
        from . import s3
        return getattr(s3, name)
    raise AttributeError(name)


__all__ = [
    "SEGMENT_SIZE",
    "EnvelopeReader",
    "EnvelopeWriter",
    "Header",
    "IntegrityError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "KeyMaterialError",
    "KeyUnwrapper",
    "KeyWrapper",
    "LocalStorage",
    "MemoryStorage",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectWriter",
    "S3Storage",
    "Storage",
    "StorageError",
    "StoragePermissionError",
    "SymmetricKey",
    "VaultPrivateKey",
    "VaultPublicKey",
    "make_client",
    "open_envelope",
    "peek_header",
    "put_bytes",
    "read_bytes",
    "rewrap_header",
    "seal",
    "validate_key",
    "validate_metadata",
]
