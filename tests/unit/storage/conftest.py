"""Fixtures for the storage tests: one moto S3 server per session, fresh buckets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from s3server import MotoServer


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A moto server on 127.0.0.1 shared by the session (IAM not enforced)."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_client(moto_server: MotoServer) -> Any:
    return moto_server.client()
