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
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from storage.keys import SymmetricKey, VaultPrivateKey, VaultPublicKey

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
