"""Fixtures: one real stack per test session (it takes a few seconds to start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Stack, build_stack, require_clamd, teardown_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_clamd()
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
