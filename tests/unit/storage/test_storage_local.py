"""LocalStorage specifics: permissions, crash leftovers, confinement."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import LocalStorage, ObjectNotFoundError, StorageError, put_bytes, read_bytes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Umask 0: proves modes are forced, not inherited from a strict umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_file_and_directory_modes(tmp_path: Path) -> None:
    root = tmp_path / "new-root"
    store = LocalStorage(root)
    put_bytes(store, "dz/abc/obj", b"secret", {"m": "1"})
    assert _mode(root) == 0o700
    for path in root.rglob("*"):
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert (root / "objects" / "dz" / "abc" / "obj").read_bytes() == b"secret"
    assert (root / "meta" / "dz" / "abc" / "obj").exists()


@pytest.mark.usefixtures("permissive_umask")
def test_partial_file_is_private_while_writing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    with store.writer("k") as sink:
        sink.write(b"x" * 10)
        partials = list((tmp_path / "partial").iterdir())
        assert len(partials) == 1
        assert _mode(partials[0]) == 0o600


def test_crash_leaves_unlisted_partial_that_cleanup_removes(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    put_bytes(store, "dz/ok", b"fine")
    crashed = store.writer("dz/crashed")
    crashed.__enter__().write(b"half")  # process "dies" here: no __exit__
    partial_dir = tmp_path / "partial"
    leftovers = list(partial_dir.iterdir())
    assert len(leftovers) == 1
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    # A fresh instance (after restart) sees only committed objects.
    restarted = LocalStorage(tmp_path)
    assert list(restarted.keys()) == ["dz/ok"]
    assert not restarted.exists("dz/crashed")
    assert restarted.cleanup_partials(3600) == 1
    assert list(partial_dir.iterdir()) == []
    assert read_bytes(restarted, "dz/ok") == b"fine"


def test_cleanup_removes_orphan_metadata(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    put_bytes(store, "a/live", b"x", {"m": "1"})
    orphan = tmp_path / "meta" / "a" / "orphan"  # crash between the two commit renames
    orphan.write_text("{}")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    assert store.cleanup_partials(3600) == 1
    assert not orphan.exists()
    assert store.head("a/live").metadata == {"m": "1"}


def test_symlinked_directory_cannot_escape_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "loot").write_bytes(b"not yours")
    store = LocalStorage(tmp_path / "root")
    os.symlink(outside, tmp_path / "root" / "objects" / "evil")
    with pytest.raises(StorageError):
        store.open("evil/loot")
    with pytest.raises(StorageError):
        store.writer("evil/planted")
    assert list(store.keys()) == []
    assert sorted(os.listdir(outside)) == ["loot"]


def test_symlinked_object_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"server secret")
    store = LocalStorage(tmp_path / "root")
    os.symlink(secret, tmp_path / "root" / "objects" / "link")
    assert list(store.keys()) == []  # listing skips it silently
    # Direct access is loud: a symlink in the tree is tampering, not a missing object.
    for call in (store.open, store.head, store.exists):
        with pytest.raises(StorageError):
            call("link")
    os.symlink("objects-sibling", tmp_path / "root" / "objects" / "inner")
    with pytest.raises(StorageError):
        store.open("inner")


def test_key_that_is_also_a_prefix_is_refused(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    put_bytes(store, "a", b"file")
    with pytest.raises(StorageError):
        put_bytes(store, "a/b", b"child")
    assert read_bytes(store, "a") == b"file"
    assert list(store.keys()) == ["a"]
    assert store.cleanup_partials(0) == 0


def test_corrupt_metadata_is_reported(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    put_bytes(store, "k", b"x")
    (tmp_path / "meta" / "k").write_text("[not a mapping")
    with pytest.raises(StorageError):
        store.head("k")


def test_missing_metadata_sidecar_means_empty(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    put_bytes(store, "k", b"x", {"m": "1"})
    (tmp_path / "meta" / "k").unlink()
    assert store.head("k").metadata == {}
    with pytest.raises(ObjectNotFoundError):
        store.head("other")


def test_duplicate_links_instead_of_copying(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "vault")
    put_bytes(store, "staging/x.1", b"sealed bytes")
    assert store.duplicate("staging/x.1", "vault/x.1") is True
    a = (tmp_path / "vault/objects/staging/x.1").stat()
    b = (tmp_path / "vault/objects/vault/x.1").stat()
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) and b.st_nlink == 2
    assert stat.S_IMODE(b.st_mode) == 0o600
    assert list((tmp_path / "vault/partial").iterdir()) == []


def test_duplicate_copies_where_links_are_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStorage(tmp_path / "vault")
    put_bytes(store, "staging/x.1", b"sealed bytes")

    def no_links(*_: object, **__: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr("storage.local.os.link", no_links)
    # New bytes: the caller must read the copy back, so it is told.
    assert store.duplicate("staging/x.1", "vault/x.1") is False
    a = (tmp_path / "vault/objects/staging/x.1").stat()
    b = (tmp_path / "vault/objects/vault/x.1").stat()
    assert a.st_ino != b.st_ino and read_bytes(store, "vault/x.1") == b"sealed bytes"


def test_long_writes_start_their_writeback_early(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every WRITEBACK_EVERY bytes the kernel is asked to start writing what came
    before (so the commit's fsync finds little left); the object is unchanged by it."""
    import storage.local as local

    calls: list[int] = []
    real = local.start_writeback

    def recording(fd: int, offset: int) -> None:
        calls.append(offset)
        real(fd, offset)  # the real sync_file_range, on the partial file

    monkeypatch.setattr(local, "WRITEBACK_EVERY", 1 << 20)
    monkeypatch.setattr(local, "start_writeback", recording)
    store = LocalStorage(tmp_path / "store")
    pieces = [os.urandom(300_000) for _ in range(12)]  # 3.6 MB
    with store.writer("k") as w:
        for piece in pieces:
            w.write(piece)
    assert calls == [0, 1_200_000, 2_400_000]  # each from where the last one began
    assert read_bytes(store, "k") == b"".join(pieces)


def test_writeback_is_a_no_op_without_sync_file_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storage import _fsutil

    monkeypatch.setattr(_fsutil, "_sync_file_range", False)  # as on a non-Linux libc
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 10)
        _fsutil.start_writeback(fd, 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10
