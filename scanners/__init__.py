"""Upload scanning for kinko: clamd client/process, content-type policy, My Number checks.

This package imports neither Flask nor ``portal`` nor ``storage``; backends take plain
arguments and never read environment or configuration.
"""

from scanners.errors import ScannerError, ScannerUnavailableError

__all__ = ["ScannerError", "ScannerUnavailableError"]
