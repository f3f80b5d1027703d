"""Shared test configuration."""

from __future__ import annotations

import os

# Tests must never pick up a developer's instance by accident.
os.environ.pop("KINKO_HOME", None)
