"""Crash points for fault-injection tests.

``KINKO_FAULT_CRASH_AT=<name>`` makes the process SIGKILL itself when it
reaches :func:`checkpoint` ``(name)``: a real crash, with no cleanup, no
``finally`` and no flush, so that the tests prove recovery from the state a
power cut would leave.  Unset in production, this costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


def checkpoint(name: str) -> None:
    if os.environ.get("KINKO_FAULT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
