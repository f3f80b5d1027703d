"""Fixtures: one real stack per test session (it takes a few seconds to start)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .harness import Stack, build_stack, teardown_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not os.path.exists("/usr/sbin/clamd"):
        if os.environ.get("CI"):
            pytest.fail("clamd is not installed: `make test` installs clamav-daemon")
        pytest.skip("clamd is not installed")
    s = build_stack(tmp_path_factory.mktemp)
    try:
        yield s
    finally:
        teardown_stack(s)


@pytest.fixture(scope="session")
def acme_token(stack: Stack) -> str:
    return stack.token("acme", "hr")


@pytest.fixture(scope="session")
def beta_token(stack: Stack) -> str:
    return stack.token("beta", "hr")
