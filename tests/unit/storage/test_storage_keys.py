"""Key wrapping and key files."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import IntegrityError, KeyMaterialError, SymmetricKey, VaultPrivateKey, VaultPublicKey

DEK = bytes(range(32))


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_symmetric_key_file(tmp_path: Path) -> None:
    key = SymmetricKey.generate()
    path = tmp_path / "dropzone.key"
    key.save(path)
    assert _mode(path) == 0o600
    loaded = SymmetricKey.load(path)
    assert loaded.key_id == key.key_id
    assert loaded.unwrap(key.wrap(DEK, "o"), "o") == DEK
    with pytest.raises(FileExistsError):  # never clobber a key
        SymmetricKey.generate().save(path)
    assert SymmetricKey.load(path).key_id == key.key_id


def test_save_does_not_follow_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "target"
    os.symlink(target, tmp_path / "link")
    with pytest.raises(FileExistsError):
        SymmetricKey.generate().save(tmp_path / "link")
    assert not target.exists()


def test_key_id_is_short_stable_and_not_the_key() -> None:
    raw = os.urandom(32)
    key = SymmetricKey.from_bytes(raw)
    assert re.fullmatch(r"[0-9a-f]{16}", key.key_id)
    assert key.key_id == SymmetricKey.from_bytes(raw).key_id
    assert key.key_id != SymmetricKey.generate().key_id
    assert key.key_id not in raw.hex()
    assert raw.hex() not in repr(key) and key.key_id in repr(key)


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33), bytes(32)])
def test_bad_symmetric_key_bytes(raw: bytes) -> None:
    with pytest.raises(KeyMaterialError):
        SymmetricKey.from_bytes(raw)


def test_symmetric_wrap(tmp_path: Path) -> None:
    key = SymmetricKey.generate()
    wrapped = key.wrap(DEK, "obj-A")
    assert len(wrapped) == 60 and DEK not in wrapped
    assert key.wrap(DEK, "obj-A") != wrapped  # random nonce
    assert key.unwrap(wrapped, "obj-A") == DEK
    with pytest.raises(IntegrityError):
        key.unwrap(wrapped, "obj-B")
    with pytest.raises(IntegrityError):
        SymmetricKey.generate().unwrap(wrapped, "obj-A")
    with pytest.raises(IntegrityError):
        key.unwrap(wrapped[:-1], "obj-A")
    flipped = bytearray(wrapped)
    flipped[20] ^= 1
    with pytest.raises(IntegrityError):
        key.unwrap(bytes(flipped), "obj-A")
    with pytest.raises(KeyMaterialError):
        key.wrap(b"short", "obj-A")


@pytest.mark.usefixtures("permissive_umask")
def test_vault_key_files(tmp_path: Path) -> None:
    private = VaultPrivateKey.generate()
    private.save(tmp_path / "vault.pem")
    private.public_key().save(tmp_path / "vault.pub.pem")
    assert _mode(tmp_path / "vault.pem") == 0o600
    assert _mode(tmp_path / "vault.pub.pem") == 0o644
    loaded = VaultPrivateKey.load(tmp_path / "vault.pem")
    public = VaultPublicKey.load(tmp_path / "vault.pub.pem")
    assert loaded.key_id == public.key_id == private.key_id == private.public_key().key_id
    assert loaded.unwrap(public.wrap(DEK, "o"), "o") == DEK
    assert VaultPublicKey.from_bytes(public.to_bytes()).key_id == public.key_id
    with pytest.raises(FileExistsError):
        VaultPrivateKey.generate().save(tmp_path / "vault.pem")


def test_vault_private_key_with_password(tmp_path: Path) -> None:
    private = VaultPrivateKey.generate()
    private.save(tmp_path / "vault.pem", password=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "vault.pem").read_bytes()
    assert VaultPrivateKey.load(tmp_path / "vault.pem", password=b"correct horse").key_id == (
        private.key_id
    )
    for password in (None, b"wrong"):
        with pytest.raises(KeyMaterialError):
            VaultPrivateKey.load(tmp_path / "vault.pem", password=password)


def test_key_files_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    SymmetricKey.generate().save(tmp_path / "sym.key")
    private = VaultPrivateKey.generate()
    private.save(tmp_path / "vault.pem")
    private.public_key().save(tmp_path / "vault.pub")
    with pytest.raises(KeyMaterialError):
        SymmetricKey.load(tmp_path / "vault.pem")
    with pytest.raises(KeyMaterialError):
        VaultPrivateKey.load(tmp_path / "sym.key")
    with pytest.raises(KeyMaterialError):
        VaultPrivateKey.load(tmp_path / "vault.pub")
    with pytest.raises(KeyMaterialError):
        VaultPublicKey.load(tmp_path / "vault.pem")


def test_public_key_cannot_decrypt() -> None:
    public = VaultPrivateKey.generate().public_key()
    assert not hasattr(public, "unwrap")
    assert not any("private" in name.lower() for name in vars(public))


def test_vault_wrap() -> None:
    private = VaultPrivateKey.generate()
    public = private.public_key()
    wrapped = public.wrap(DEK, "obj-A")
    assert len(wrapped) == 80 and DEK not in wrapped
    assert public.wrap(DEK, "obj-A")[:32] != wrapped[:32]  # fresh ephemeral key each time
    assert private.unwrap(wrapped, "obj-A") == DEK
    with pytest.raises(IntegrityError):
        private.unwrap(wrapped, "obj-B")
    with pytest.raises(IntegrityError):
        VaultPrivateKey.generate().unwrap(wrapped, "obj-A")
    with pytest.raises(IntegrityError):  # low-order ephemeral point: all-zero secret
        private.unwrap(bytes(32) + wrapped[32:], "obj-A")
    with pytest.raises(IntegrityError):
        private.unwrap(wrapped[:-1], "obj-A")


def test_low_order_recipient_is_refused() -> None:
    with pytest.raises(KeyMaterialError):
        VaultPublicKey.from_bytes(bytes(32)).wrap(DEK, "o")
    with pytest.raises(KeyMaterialError):
        VaultPublicKey.from_bytes(bytes(31))
