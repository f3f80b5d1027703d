"""clamd size limits derived from the upload cap, shared by the config writer and policy.

Why this exists: clamd *silently truncates* archive entries to MaxFileSize (measured on
ClamAV 1.4.6: "cli_unzip: trimming output size to maxfilesize", reply ``stream: OK``,
no Heuristics.Limits alert even with AlertExceedsMax).  Malware placed past that offset
in a highly compressed entry would pass.  So MaxFileSize is set generously and
:func:`scanners.filetypes.check_file` refuses archives with entries larger than it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClamdLimits", "clamd_limits"]

# clamd keeps StreamMaxLength / MaxScanSize in 32 bits and cannot scan single files of
# 2 GiB or more ("technical design limitations", clamd.conf(5)).
MAX_STREAM = (4 << 30) - 1
MAX_FILE = (2 << 30) - 1
# Office XML compresses ~5-15x; allow entries up to this multiple of the upload itself.
EXPANSION = 16


@dataclass(frozen=True)
class ClamdLimits:
    """clamd.conf values (bytes) that guarantee a full scan of an upload."""

    stream_max_length: int
    max_file_size: int
    max_scan_size: int


def clamd_limits(max_bytes: int) -> ClamdLimits:
    """Limits for uploads of at most ``max_bytes`` (monotonic in ``max_bytes``).

    Raises ValueError if ``max_bytes`` is not positive or too large for clamd (~2 GiB).
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    stream = max_bytes + max(1 << 20, max_bytes // 16)
    if stream > MAX_FILE:
        raise ValueError(f"max_bytes {max_bytes} is too large for clamd (max ~2 GiB per file)")
    max_file = min(MAX_FILE, EXPANSION * stream)
    # Containers count themselves plus everything extracted towards MaxScanSize; beyond
    # it clamd does alert (Heuristics.Limits.Exceeded.MaxScanSize -> refused).
    max_scan = min(MAX_STREAM, 2 * max_file + stream)
    return ClamdLimits(stream, max_file, max_scan)
