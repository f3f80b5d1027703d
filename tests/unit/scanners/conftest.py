"""Fixtures for the scanners tests: EICAR built at runtime, zip crafting, real clamd."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _scanners_helpers import eicar_bytes

from scanners.clamd import ClamdClient
from scanners.clamd_process import ClamdProcess

CLAMD_BINARY = "/usr/sbin/clamd"


def require_clamd() -> None:
    """Skip locally without clamd, but fail in CI where clamav must be installed."""
    if not os.path.exists(CLAMD_BINARY):
        msg = f"{CLAMD_BINARY} not installed"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def eicar() -> bytes:
    return eicar_bytes()


@pytest.fixture(scope="session")
def no_official_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty 'official database' dir, so clamd always runs on the shipped signature."""
    return tmp_path_factory.mktemp("no-official-db")


@pytest.fixture(scope="session")
def clamd_process(
    tmp_path_factory: pytest.TempPathFactory, no_official_dir: Path
) -> Iterator[ClamdProcess]:
    require_clamd()
    proc = ClamdProcess(
        tmp_path_factory.mktemp("clamd"), max_bytes=32 << 20, official_dir=no_official_dir
    )
    proc.start(timeout=60)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def clamd_client(clamd_process: ClamdProcess) -> ClamdClient:
    assert clamd_process.address is not None
    return ClamdClient(clamd_process.address, timeout=30)


@pytest.fixture
def private_clamd(
    tmp_path_factory: pytest.TempPathFactory, no_official_dir: Path
) -> Iterator[Callable[..., ClamdProcess]]:
    """Factory for extra clamd instances (pause/stop/limit tests must not touch the
    shared one).  All are stopped at teardown."""
    require_clamd()
    started: list[ClamdProcess] = []

    def factory(max_bytes: int = 8 << 20) -> ClamdProcess:
        proc = ClamdProcess(
            tmp_path_factory.mktemp("clamd-private"),
            max_bytes=max_bytes,
            official_dir=no_official_dir,
        )
        started.append(proc)
        proc.start(timeout=60)
        return proc

    yield factory
    for proc in started:
        proc.stop()
