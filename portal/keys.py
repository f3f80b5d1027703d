"""Key files under ``KINKO_HOME/keys`` and which role may load which.

| file            | client app | worker | office app / CLI |
|-----------------|------------|--------|------------------|
| dropzone.key    | yes        | yes    | yes              |
| vault.pub       | yes        | yes    | yes              |
| vault.key       | **no**     | **no** | yes              |
| audit.key       | yes        | yes    | yes              |
| session-*.key   | own        | -      | own              |

The client-facing process never opens ``vault.key``: it can seal to the
vault but never open it.  ``KINKO_VAULT_PRIVATE_KEY`` may point the office
side at a key kept elsewhere (another user's file, a mounted secret).

With ``KINKO_DROPZONE_KMS_KEY`` / ``KINKO_VAULT_KMS_KEY`` the keys live in AWS
KMS instead (``storage.kms``): new objects are wrapped by the KMS key, the
key files (if present) stay in the ring so that older objects still open.

| KMS use         | client app    | worker          | office app / CLI |
|-----------------|---------------|-----------------|------------------|
| drop-zone key   | Encrypt (+ Decrypt of ``tus/*`` parts) | Encrypt+Decrypt | Encrypt+Decrypt |
| vault key       | - (no call)   | Encrypt         | Decrypt+Encrypt (rewrap) |
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from storage.keys import KeyUnwrapper, KeyWrapper, SymmetricKey, VaultPrivateKey, VaultPublicKey
from storage.kms import DataKeyring, KeyRing, KmsClient, KmsUnwrapper, KmsWrapper, make_kms_client

from .settings import Settings


class KeyFileError(Exception):
    """A key file is missing: the instance was not initialised."""


DROPZONE = "dropzone.key"
VAULT_PUBLIC = "vault.pub"
VAULT_PRIVATE = "vault.key"
AUDIT = "audit.key"


def _path(settings: Settings, name: str) -> Path:
    path = settings.keys_dir / name
    if not path.exists():
        raise KeyFileError(f"{path} is missing: run `kinko init` first")
    return path


def vault_private_path(settings: Settings) -> Path:
    override = os.environ.get("KINKO_VAULT_PRIVATE_KEY")
    return Path(override) if override else settings.keys_dir / VAULT_PRIVATE


def load_dropzone_key(settings: Settings) -> SymmetricKey:
    return SymmetricKey.load(_path(settings, DROPZONE))


def load_vault_public(settings: Settings) -> VaultPublicKey:
    return VaultPublicKey.load(_path(settings, VAULT_PUBLIC))


def load_vault_private(settings: Settings) -> VaultPrivateKey:
    """Office side only.  Never call this from the client app or the worker."""
    path = vault_private_path(settings)
    if not path.exists():
        raise KeyFileError(f"{path} is missing: the vault private key is not available")
    return VaultPrivateKey.load(path)


def kms_client(settings: Settings, role: str) -> KmsClient:
    """A KMS client with the role's credentials (``KINKO_KMS_PROFILE_<ROLE>``)."""
    return make_kms_client(profile=settings.kms_profile(role))


def dropzone_keyring(settings: Settings, role: str,
                     kms: KmsClient | None = None) -> DataKeyring:
    """The drop-zone key of a role: the key file, or KMS (+ the key file for old objects).

    The client app reads back its own resumable-upload parts (``tus/...``) to assemble
    them, so its ring can unwrap too; its IAM policy limits ``kms:Decrypt`` to those
    (condition on the encryption context, see docs/deploy.md).
    """
    if not settings.dropzone_kms_key:
        return load_dropzone_key(settings)
    kms = kms if kms is not None else kms_client(settings, role)
    wrapper = KmsWrapper(kms, settings.dropzone_kms_key)
    wrapper.resolve()  # fail closed at start: missing, disabled or unusable key
    unwrappers: list[KeyUnwrapper] = [KmsUnwrapper(kms)]
    if (settings.keys_dir / DROPZONE).exists():
        unwrappers.append(load_dropzone_key(settings))
    return KeyRing(wrapper, unwrappers)


def vault_wrapper(settings: Settings, role: str, kms: KmsClient | None = None) -> KeyWrapper:
    """What seals to the vault: ``vault.pub``, or the vault KMS key (Encrypt only).

    The client app never seals to the vault, so with KMS it never even resolves the key.
    """
    if not settings.vault_kms_key:
        return load_vault_public(settings)
    if role == "client":
        return KmsWrapper(_NoKms(), settings.vault_kms_key)
    wrapper = KmsWrapper(kms if kms is not None else kms_client(settings, role),
                         settings.vault_kms_key)
    wrapper.resolve()
    return wrapper


class _NoKms:
    """The client app's stand-in for a KMS client on the vault key: any use is a bug."""

    def __getattr__(self, name: str) -> Any:
        raise PermissionError("the client app never uses the vault key")


def needs_kms(settings: Settings, role: str) -> bool:
    """Whether this role calls KMS at all (the client app only for the drop zone)."""
    return bool(settings.dropzone_kms_key or (settings.vault_kms_key and role != "client"))


def vault_unwrapper(settings: Settings, kms: KmsClient | None = None) -> KeyUnwrapper:
    """Office side only: what opens vault objects (``vault.key``, or KMS + ``vault.key``
    if it is still there for objects sealed before the switch)."""
    if not settings.vault_kms_key:
        return load_vault_private(settings)
    unwrappers: list[KeyUnwrapper] = [
        KmsUnwrapper(kms if kms is not None else kms_client(settings, "office"))]
    if vault_private_path(settings).exists():
        unwrappers.append(load_vault_private(settings))
    return KeyRing(None, unwrappers)


def load_secret(settings: Settings, name: str) -> bytes:
    return _path(settings, name).read_bytes()


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def ensure_keys(settings: Settings) -> list[str]:
    """Create every missing key; never overwrite one.  Returns the names created."""
    settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.keys_dir, 0o700)
    created: list[str] = []
    if not (settings.keys_dir / DROPZONE).exists():
        SymmetricKey.generate().save(settings.keys_dir / DROPZONE)
        created.append(DROPZONE)
    priv_path = vault_private_path(settings)
    if not (settings.keys_dir / VAULT_PUBLIC).exists():
        if priv_path.exists():
            priv = VaultPrivateKey.load(priv_path)
        else:
            priv = VaultPrivateKey.generate()
            priv.save(priv_path)
            created.append(VAULT_PRIVATE)
        priv.public_key().save(settings.keys_dir / VAULT_PUBLIC)
        created.append(VAULT_PUBLIC)
    for name in (AUDIT, "session-client.key", "session-office.key"):
        if not (settings.keys_dir / name).exists():
            _write_secret(settings.keys_dir / name, secrets.token_bytes(32))
            created.append(name)
    return created
