"""Exception hierarchy of the ``scanners`` package.

Every exception raised on purpose by this package derives from :class:`ScannerError`,
so callers can catch one root.  Security invariant: no exception here ever means
"clean" -- a caller that catches one must treat the upload as *not scanned yet*.
"""

from __future__ import annotations

__all__ = ["ScannerError", "ScannerUnavailableError"]


class ScannerError(Exception):
    """Root of all errors raised by the ``scanners`` package."""


class ScannerUnavailableError(ScannerError):
    """The scanner could not give a verdict: retry later, never treat as clean.

    Raised when clamd is down, refuses the connection, times out, answers with
    protocol garbage or with an ``... ERROR`` reply (including
    ``INSTREAM size limit exceeded``).
    """
