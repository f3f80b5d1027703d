"""Build storage backends from the URLs of the configuration."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from storage.base import Storage
from storage.local import LocalStorage

from .settings import SettingsError


def open_storage(url: str) -> Storage:
    """``file:///path`` → LocalStorage.  (``s3://bucket/prefix`` comes with issue 7.)"""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(unquote(parsed.path))
    raise SettingsError(f"unsupported storage URL scheme: {parsed.scheme!r}")
