"""The services one process needs, built once per process for its role.

Roles decide which keys are loaded: only ``office`` (the office app and the
CLI) loads the vault private key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from sqlalchemy.orm import Session, sessionmaker

from scanners.clamd import ClamdClient
from storage.base import Storage
from storage.keys import KeyUnwrapper, KeyWrapper
from storage.kms import DataKeyring

from . import keys
from .backends import open_storage
from .db import make_engine, make_read_sessionmaker, make_sessionmaker
from .settings import Settings

Role = Literal["client", "worker", "office"]


class Enqueuer(Protocol):
    def scan(self, upload_id: str, delay: float = 0) -> None: ...
    def pull(self, upload_id: str, staff_id: int | None) -> None: ...


class NullEnqueuer:
    """For the CLI: work runs inline or waits for the worker's reconciler."""

    def scan(self, upload_id: str, delay: float = 0) -> None:
        return None

    def pull(self, upload_id: str, staff_id: int | None) -> None:
        return None


@dataclass
class Services:
    settings: Settings
    role: Role
    sessions: sessionmaker[Session]
    # Sessions that only read: no lock on SQLite, a SELECT only (portal.db).
    reads: sessionmaker[Session]
    dropzone: Storage
    vault: Storage
    # Key files (SymmetricKey, VaultPublicKey, VaultPrivateKey) or, with KMS custody,
    # storage.kms wrappers and key rings (see portal.keys).
    dropzone_key: DataKeyring
    vault_public: KeyWrapper
    vault_private: KeyUnwrapper | None
    audit_key: bytes
    enqueue: Enqueuer
    scanner_factory: Callable[[], ClamdClient | None]

    def scanner(self) -> ClamdClient | None:
        return self.scanner_factory()

    def reader(self) -> Session:
        """A session for reading only (``with services.reader() as db:``)."""
        return self.reads()


class _NoVault:
    """Stands in for the vault in the client app: any use is a bug."""

    def __getattr__(self, name: str) -> Any:
        raise PermissionError("the client app has no access to the vault")


def clamd_address(settings: Settings) -> str | None:
    """KINKO_CLAMD, or the address `kinko serve` recorded for its own clamd."""
    if settings.clamd:
        return settings.clamd
    recorded = settings.run_dir / "clamd.address"
    if recorded.exists():
        return recorded.read_text().strip() or None
    return None


def build_services(settings: Settings, role: Role, enqueue: Enqueuer | None = None) -> Services:
    engine = make_engine(settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms)

    def scanner() -> ClamdClient | None:
        address = clamd_address(settings)
        return ClamdClient(address, timeout=settings.scan_timeout) if address else None

    kms = keys.kms_client(settings, role) if keys.needs_kms(settings, role) else None
    return Services(
        settings=settings,
        role=role,
        sessions=make_sessionmaker(engine),
        reads=make_read_sessionmaker(engine),
        dropzone=open_storage(settings.dropzone_url, profile=settings.dropzone_aws_profile),
        # The client-facing process never even builds a vault client (so it
        # needs no vault credentials at all): only the worker and the office.
        vault=(open_storage(settings.vault_url, profile=settings.vault_aws_profile)
               if role != "client" else cast(Storage, _NoVault())),
        dropzone_key=keys.dropzone_keyring(settings, role, kms),
        vault_public=keys.vault_wrapper(settings, role, kms),
        vault_private=keys.vault_unwrapper(settings, kms) if role == "office" else None,
        audit_key=keys.load_secret(settings, keys.AUDIT),
        enqueue=enqueue or NullEnqueuer(),
        scanner_factory=scanner,
    )
