"""Configuration: one frozen Settings object read from the environment.

Every name is prefixed ``KINKO_`` (see ../shared/contract.md).  Nothing here
holds a secret: keys live in files under ``KINKO_HOME/keys`` and are loaded
by role (see :mod:`portal.keys`), so a process only ever holds the keys its
role needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20
# ClamAV cannot scan a file over 2 GB ("technical design limitations",
# clamd.conf(5)), and clamd's own limits need headroom above the upload
# maximum, so the default stays just under that ceiling.
DEFAULT_MAX_UPLOAD = 1900 * MiB


class SettingsError(Exception):
    """A configuration value is missing or malformed."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number") from exc


def _cores(at_most: int) -> int:
    """The cores this process may run on, at most ``at_most``."""
    return max(1, min(at_most, len(os.sched_getaffinity(0))))


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value <= 0:
        raise SettingsError(f"{name} must be positive")
    return value


def _networks(raw: str) -> tuple[str, ...]:
    import ipaddress
    out = []
    for part in raw.split(","):
        if part.strip():
            try:
                out.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError as exc:
                raise SettingsError(f"KINKO_OFFICE_ALLOWED_NETWORKS: bad network {part!r}") \
                    from exc
    return tuple(out)


def _notice_batch(env: Mapping[str, str]) -> int:
    minutes = _int(env, "KINKO_NOTICE_BATCH_MINUTES", 5)
    if minutes < 0:
        raise SettingsError("KINKO_NOTICE_BATCH_MINUTES must not be negative")
    return minutes


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    dropzone_url: str
    vault_url: str
    queue_url: str
    clamd: str | None
    client_host: str
    client_port: int
    office_host: str
    office_port: int
    max_upload_bytes: int
    scan_timeout: float
    scan_retry_base: float
    scan_retry_max: float
    smtp_url: str | None
    mail_from: str
    public_url: str
    client_idle_minutes: int = 30
    staff_idle_minutes: int = 15
    session_absolute_hours: int = 12
    office_allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    dropzone_aws_profile: str | None = None
    scanner_probe_seconds: float = 60.0
    vault_aws_profile: str | None = None
    # Staff notices about new uploads are batched per company: one notice once
    # the oldest un-notified upload is this old (0: at the next worker minute).
    notice_batch_minutes: int = 5
    # Key custody in AWS KMS (docs/encryption.md): key id, ARN or alias; unset = key
    # files in KINKO_HOME/keys.  KMS credentials per role (unset: boto3's default chain).
    dropzone_kms_key: str | None = None
    vault_kms_key: str | None = None
    kms_profiles: tuple[tuple[str, str], ...] = ()
    # Faults (docs/performance.md "Faults"): how long a writer waits for the
    # SQLite lock before the request gets a 503; how old a drop-zone object
    # without a row / an uncommitted vault attempt (orphan) and an abandoned
    # partial write must be before the reconciler deletes them; how long the
    # worker waits before retrying a pull whose storage failed.
    db_busy_timeout_ms: int = 15000
    orphan_age_seconds: float = 3600.0
    partial_age_seconds: float = 24 * 3600.0  # an upload may take hours on a slow line
    pull_retry_seconds: float = 30.0
    # gthread threads per web worker process (portal/gunicorn_conf.py).
    web_threads: int = 64
    # PostgreSQL: the owner role `kinko init` migrates and grants with; the
    # processes themselves connect as the (less privileged) database_url role.
    database_admin_url: str | None = None
    # A scan's lease (renewed every third of it while the scan runs): how long
    # a killed worker's scan waits before another worker takes it over.
    scan_lease_seconds: float = 60.0
    # How many workers `kinko serve` runs itself (0: they run elsewhere).  A
    # worker is one Python process (its number check and per-chunk work hold
    # the GIL); the default is one per core, at most two (docs/performance.md,
    # Concurrency).
    serve_workers: int = field(default_factory=lambda: _cores(2))
    # Scanning while receiving (portal.intake): at most this many uploads per
    # client-app process stream to clamd as they arrive (0: off; the worker
    # then streams every file to clamd after the upload, as before).
    scan_on_receipt: int = 16
    # ... of which the uploads whose declared sizes fit in this many bytes at once
    # (per process) are held in memory files that clamd reads where they are
    # (FILDES, clamd on a unix socket); the others stream (INSTREAM).  0: always stream.
    scan_buffer_bytes: int = 256 << 20
    # Job threads per worker process.  A scan job spends much of its time
    # waiting (for clamd's answer, for fsync), so more than the cores.
    worker_threads: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("KINKO_HOME") or "./instance").resolve()
        client_port = _int(env, "KINKO_CLIENT_PORT", 8443)
        max_upload = _int(env, "KINKO_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD)
        if max_upload <= 0:
            raise SettingsError("KINKO_MAX_UPLOAD_BYTES must be positive")
        return cls(
            home=home,
            database_url=env.get("KINKO_DATABASE_URL") or f"sqlite:///{home / 'kinko.db'}",
            dropzone_url=env.get("KINKO_DROPZONE_URL") or (home / "dropzone").as_uri(),
            vault_url=env.get("KINKO_VAULT_URL") or (home / "vault").as_uri(),
            queue_url=env.get("KINKO_QUEUE_URL") or f"sqlite:///{home / 'queue.db'}",
            clamd=env.get("KINKO_CLAMD") or None,
            client_host=env.get("KINKO_CLIENT_HOST") or "0.0.0.0",  # noqa: S104 - the public app
            client_port=client_port,
            # The staff console must not face the internet (domain.md): loopback
            # unless an operator deliberately binds it to the office network.
            office_host=env.get("KINKO_OFFICE_HOST") or "127.0.0.1",
            office_port=_int(env, "KINKO_OFFICE_PORT", 8444),
            max_upload_bytes=max_upload,
            scan_timeout=_float(env, "KINKO_SCAN_TIMEOUT", 300.0),
            scan_retry_base=_float(env, "KINKO_SCAN_RETRY_BASE", 10.0),
            scan_retry_max=_float(env, "KINKO_SCAN_RETRY_MAX", 600.0),
            smtp_url=env.get("KINKO_SMTP_URL") or None,
            mail_from=env.get("KINKO_MAIL_FROM") or "kinko@localhost",
            public_url=env.get("KINKO_PUBLIC_URL") or f"https://localhost:{client_port}",
            client_idle_minutes=_int(env, "KINKO_CLIENT_IDLE_MINUTES", 30),
            staff_idle_minutes=_int(env, "KINKO_STAFF_IDLE_MINUTES", 15),
            session_absolute_hours=_int(env, "KINKO_SESSION_ABSOLUTE_HOURS", 12),
            dropzone_aws_profile=env.get("KINKO_DROPZONE_AWS_PROFILE") or None,
            scanner_probe_seconds=_float(env, "KINKO_SCANNER_PROBE_SECONDS", 60.0),
            vault_aws_profile=env.get("KINKO_VAULT_AWS_PROFILE") or None,
            notice_batch_minutes=_notice_batch(env),
            dropzone_kms_key=env.get("KINKO_DROPZONE_KMS_KEY") or None,
            vault_kms_key=env.get("KINKO_VAULT_KMS_KEY") or None,
            kms_profiles=tuple(
                (role, env[f"KINKO_KMS_PROFILE_{role.upper()}"])
                for role in ("client", "worker", "office")
                if env.get(f"KINKO_KMS_PROFILE_{role.upper()}")),
            db_busy_timeout_ms=_positive(env, "KINKO_DB_BUSY_TIMEOUT_MS", 15000),
            orphan_age_seconds=_float(env, "KINKO_ORPHAN_AGE_SECONDS", 3600.0),
            partial_age_seconds=_float(env, "KINKO_PARTIAL_AGE_SECONDS", 24 * 3600.0),
            pull_retry_seconds=_float(env, "KINKO_PULL_RETRY_SECONDS", 30.0),
            web_threads=_positive(env, "KINKO_WEB_THREADS", 64),
            database_admin_url=env.get("KINKO_DATABASE_ADMIN_URL") or None,
            scan_lease_seconds=max(3.0, _float(env, "KINKO_SCAN_LEASE_SECONDS", 60.0)),
            serve_workers=max(0, _int(env, "KINKO_SERVE_WORKERS", _cores(2))),
            scan_on_receipt=max(0, _int(env, "KINKO_SCAN_ON_RECEIPT", 16)),
            scan_buffer_bytes=max(0, _int(env, "KINKO_SCAN_BUFFER_MB", 256)) << 20,
            worker_threads=_positive(env, "KINKO_WORKER_THREADS", 4),
            office_allowed_networks=_networks(
                env.get("KINKO_OFFICE_ALLOWED_NETWORKS") or "127.0.0.0/8,::1/128"),
        )

    def kms_profile(self, role: str) -> str | None:
        """The AWS profile a role uses for KMS (``KINKO_KMS_PROFILE_<ROLE>``)."""
        return dict(self.kms_profiles).get(role)

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def tls_cert(self) -> Path:
        return self.tls_dir / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.tls_dir / "key.pem"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"
