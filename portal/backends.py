"""Build storage backends from the URLs of the configuration."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from storage.base import Storage
from storage.errors import StorageError
from storage.local import LocalStorage

from .settings import SettingsError


def open_storage(url: str, profile: str | None = None) -> Storage:
    """Return the backend named by ``url``.

    * ``file:///path`` → :class:`LocalStorage` (``profile`` must be ``None``);
    * ``s3://bucket`` or ``s3://bucket/prefix`` → :class:`S3Storage` with a client from
      :func:`storage.s3.make_client`, using the AWS profile ``profile`` (the drop zone
      and the vault get different profiles, so the client-facing role cannot read the
      vault) or boto3's default credential chain when ``None``.

    Raises ``SettingsError`` for an unsupported or malformed URL.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if profile is not None:
            raise SettingsError("an AWS profile was given for a file:// storage URL")
        return LocalStorage(unquote(parsed.path))
    if parsed.scheme == "s3":
        from storage.s3 import S3Storage, make_client  # boto3 only where S3 is used

        bucket = parsed.netloc
        if not bucket or parsed.query or parsed.fragment or parsed.params or "@" in bucket:
            raise SettingsError("storage URL must look like s3://bucket/prefix")
        try:
            return S3Storage(make_client(profile=profile), bucket, unquote(parsed.path))
        except StorageError as exc:
            raise SettingsError(f"bad s3 storage URL: {exc}") from exc
    raise SettingsError(f"unsupported storage URL scheme: {parsed.scheme!r}")
