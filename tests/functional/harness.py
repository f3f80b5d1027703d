"""The real stack for functional tests: `kinko serve` over HTTPS with a clamd
the suite controls (so tests can stop, pause and restart it)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyotp
import requests

from scanners.clamd_process import ClamdProcess

ROOT = Path(__file__).resolve().parents[2]
# Which deployment the functional suite runs on (docs/deploy.md):
# "embedded" (SQLite, local folders, SQLite queue) or "scale" (PostgreSQL,
# S3 through a local moto server, a Redis queue).  `make test` runs both.
PROFILE = os.environ.get("KINKO_TEST_PROFILE", "embedded")
if PROFILE not in ("embedded", "scale"):
    raise RuntimeError(f"KINKO_TEST_PROFILE must be embedded or scale, not {PROFILE!r}")
KINKO = [sys.executable, "-m", "portal.cli"]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
MAX_UPLOAD = 64 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eicar() -> bytes:
    # Built at run time so that the repository carries no EICAR file.
    return (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")


def csrf_from(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


class Totp:
    """Hands out codes an account will accept: each step once, ±1 step drift."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.last = -1

    def code(self) -> str:
        t = pyotp.TOTP(self.secret)
        while True:
            clock = time.time()
            now = int(clock // 30)
            # The previous step's code expires when this step ends: not in
            # its last 10 s (a request on a busy machine could arrive late).
            early = now - 1 if clock % 30 < 20 else now
            for step in range(early, now + 2):
                if step > self.last:
                    self.last = step
                    return t.generate_otp(step)
            time.sleep(1)


@dataclass
class Stack:
    base: Path
    home: Path
    env: dict[str, str]
    client_url: str
    office_url: str
    clamd: ClamdProcess
    clamd_dir: Path
    official_dir: Path
    server: subprocess.Popen[bytes] | None = None
    profile: str = "embedded"
    services: dict[str, Any] = field(default_factory=dict)  # pg, redis, s3 (scale profile)
    buckets: dict[str, str] = field(default_factory=dict)   # area -> bucket (scale profile)
    totps: dict[str, Totp] = field(default_factory=dict)
    office_sessions: dict[str, requests.Session] = field(default_factory=dict)

    @property
    def cert(self) -> str:
        return str(self.home / "tls" / "cert.pem")

    # -- processes -----------------------------------------------------------
    def kinko(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*KINKO, *args], env=env or self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kinko {' '.join(args)} failed: {proc.stderr[-2000:]}")
        return proc

    def start_server(self) -> None:
        log = open(self.base / "serve.log", "ab")  # noqa: SIM115 - lives with the process
        self.server = subprocess.Popen([*KINKO, "serve"], env=self.env, cwd=ROOT,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.monotonic() + 60
        for url in (self.client_url, self.office_url):
            while True:
                try:
                    if requests.get(url + "/login", verify=self.cert, timeout=2).ok:
                        break
                except (requests.ConnectionError, OSError):
                    pass
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("kinko serve did not start:\n" + self.log_tail())
                time.sleep(0.3)

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(10)

    @contextmanager
    def serving_with(self, **env: str) -> Iterator[Stack]:
        """`kinko serve` restarted with ``env`` added; as before afterwards."""
        self.stop_server()
        saved = dict(self.env)
        self.env.update(env)
        self.start_server()
        try:
            yield self
        finally:
            self.stop_server()
            self.env.clear()
            self.env.update(saved)
            self.start_server()

    def log_tail(self, n: int = 4000) -> str:
        path = self.base / "serve.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def restart_clamd(self) -> None:
        """Start a new clamd at the same socket address the stack was given."""
        self.clamd = ClamdProcess(self.clamd_dir,
                                  max_bytes=int(self.env["KINKO_MAX_UPLOAD_BYTES"]),
                                  official_dir=self.official_dir)
        address = self.clamd.start(timeout=60)
        assert address == self.env["KINKO_CLAMD"], (address, self.env["KINKO_CLAMD"])

    # -- accounts ------------------------------------------------------------
    def add_staff(self, login: str, role: str = "manager", companies: str = "") -> Totp:
        secret = pyotp.random_base32()
        args = ["staff", "add", login, "--role", role, "--password", "Passw0rd-" + login,
                "--totp-secret", secret]
        if companies:
            args += ["--companies", companies]
        self.kinko(*args)
        self.totps[login] = Totp(secret)
        return self.totps[login]

    def client(self, company: str, login: str, password: str) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # env CA bundles would override verify
        s.verify = self.cert
        s.headers["Referer"] = self.client_url + "/"  # as a browser sends it
        page = s.get(self.client_url + "/login")
        r = s.post(self.client_url + "/login", data={
            "company": company, "login": login, "password": password,
            "csrf_token": csrf_from(page.text)}, allow_redirects=False)
        assert r.status_code == 302, r.status_code
        return s

    def office(self, login: str, *, fresh: bool = False) -> requests.Session:
        """A signed-in office session; reused while it is still alive, because
        every new sign-in spends one of the three TOTP steps a 30 s window has."""
        cached = self.office_sessions.get(login)
        if cached is not None and not fresh:
            r = cached.get(self.office_url + "/", allow_redirects=False)
            if r.status_code == 200:
                return cached
        s = self._office_login(login)
        self.office_sessions[login] = s
        return s

    def _office_login(self, login: str) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # env CA bundles would override verify
        s.verify = self.cert
        s.headers["Referer"] = self.office_url + "/"
        page = s.get(self.office_url + "/login")
        r = s.post(self.office_url + "/login", data={
            "login": login, "password": "Passw0rd-" + login,
            "csrf_token": csrf_from(page.text)}, allow_redirects=False)
        assert r.status_code == 302, r.status_code
        page = s.get(self.office_url + "/totp")
        r = s.post(self.office_url + "/totp", data={
            "code": self.totps[login].code(), "csrf_token": csrf_from(page.text)},
            allow_redirects=False)
        assert r.status_code == 302, r.status_code
        return s

    def vault_bytes(self, upload_id: str, *, purpose: str = "koyo", staff: str = "boss",
                    env: dict[str, str] | None = None) -> bytes:
        """A vaulted file decrypted by `kinko vault get` (logged like any use)."""
        out = self.base / f"vault-get-{upload_id}-{os.getpid()}.bin"
        self.kinko("vault", "get", upload_id, "--staff", staff, "--purpose", purpose,
                   "-o", str(out), env=env)
        try:
            return out.read_bytes()
        finally:
            out.unlink(missing_ok=True)

    def token(self, company: str, login: str) -> str:
        return self.kinko("token", "add", company, login).stdout.strip()

    # -- uploads -------------------------------------------------------------
    def api_upload(self, token: str, data: bytes | Iterable[bytes], filename: str,
                   purpose: str = "koyo", **headers: str) -> requests.Response:
        h = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
             "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
             "X-Purpose": purpose, **headers}
        return requests.post(self.client_url + "/api/v1/uploads", data=data, headers=h,
                             verify=self.cert, timeout=120)

    def form_upload(self, session: requests.Session, data: bytes, filename: str,
                    purpose: str = "koyo") -> requests.Response:
        page = session.get(self.client_url + "/")
        return session.post(self.client_url + "/uploads",
                            data={"csrf_token": csrf_from(page.text), "purpose": purpose},
                            files={"file": (filename, data, "application/octet-stream")},
                            allow_redirects=False, timeout=120)

    def status(self, token: str, upload_id: str) -> dict[str, Any]:
        r = requests.get(f"{self.client_url}/api/v1/uploads/{upload_id}",
                         headers={"Authorization": f"Bearer {token}"}, verify=self.cert,
                         timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_for(self, token: str, upload_id: str, statuses: set[str],
                 timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(token, upload_id)
            if body["status"] in statuses:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{upload_id} still {body['status']}, wanted {statuses}\n"
                                     + self.log_tail())
            time.sleep(0.2)

    def objects(self, area: str, prefix: str = "") -> list[Any]:
        """Stored objects of one area whose key starts with ``prefix``: files
        (embedded) or :class:`S3Object` (scale); both have ``name`` and
        ``read_bytes()``."""
        if self.profile == "scale":
            s3 = self.services["s3"].client()
            out = []
            for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.buckets[area], Prefix="kinko/" + prefix):
                out += [S3Object(s3, self.buckets[area], o["Key"])
                        for o in page.get("Contents", [])]
            return sorted(out, key=lambda o: o.key)
        root = self.home / area / "objects"
        return sorted(p for p in root.rglob("*") if p.is_file() and
                      p.relative_to(root).as_posix().startswith(prefix))

    def object_id(self, area: str, obj: Any) -> str:
        """The backend key of an object from :meth:`objects`."""
        if isinstance(obj, S3Object):
            return obj.key.removeprefix("kinko/")
        return str(obj.relative_to(self.home / area / "objects").as_posix())

    def db(self, *, admin: bool = False) -> Db:
        """A DB-API connection to the instance database (``?`` placeholders on
        both backends).  ``admin``: the owner role on PostgreSQL."""
        if self.profile == "scale":
            import psycopg
            pg = self.services["pg"]
            return Db(psycopg.connect(pg.admin_url if admin else pg.url()), pg=True)
        return Db(sqlite3.connect(self.home / "kinko.db"), pg=False)


@dataclass
class S3Object:
    client: Any = field(compare=False, repr=False)
    bucket: str = ""
    key: str = ""

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def read_bytes(self) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read())


class Db:
    """sqlite3 and psycopg behind one small interface for test queries."""

    def __init__(self, conn: Any, *, pg: bool) -> None:
        self.conn = conn
        self.pg = pg

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        if self.pg:
            sql = sql.replace("%", "%%").replace("?", "%s")
        return self.conn.execute(sql, tuple(params))

    def commit(self) -> None:
        self.conn.commit()

    def ago(self, **delta: float) -> Any:
        """A timestamp ``timedelta(**delta)`` before now, as each backend
        stores it (SQLite: naive UTC text as SQLAlchemy writes it)."""
        from datetime import UTC, datetime, timedelta
        at = datetime.now(UTC) - timedelta(**delta)
        return at if self.pg else at.replace(tzinfo=None).isoformat(sep=" ")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Db:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def require_clamd() -> None:
    """Fail in CI (`make test` installs clamav-daemon), skip elsewhere."""
    import pytest
    if not os.path.exists("/usr/sbin/clamd"):
        if os.environ.get("CI"):
            pytest.fail("clamd is not installed: `make test` installs clamav-daemon")
        pytest.skip("clamd is not installed")


def build_stack(tmp_factory: Callable[[str], Path],
                extra_env: dict[str, str] | None = None) -> Stack:
    """``extra_env``: more KINKO_* settings for every process (fault tests)."""
    # A short base path: the clamd socket must fit in sun_path.
    base = Path(tempfile.mkdtemp(prefix="kt-"))
    official = base / "no-official-db"
    official.mkdir()
    clamd_dir = base / "clamd"
    # The maximum upload (KINKO_MAX_UPLOAD_BYTES in extra_env may raise it,
    # e.g. for the browser's 300 MiB resumable upload); clamd's limits follow.
    max_upload = int((extra_env or {}).get("KINKO_MAX_UPLOAD_BYTES", MAX_UPLOAD))
    clamd = ClamdProcess(clamd_dir, max_bytes=max_upload, official_dir=official)
    address = clamd.start(timeout=60)
    home = base / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINKO_")}
    env.update({
        "KINKO_HOME": str(home), "KINKO_CLAMD": address,
        "KINKO_CLIENT_PORT": str(free_port()), "KINKO_OFFICE_PORT": str(free_port()),
        "KINKO_CLIENT_HOST": "127.0.0.1",
        "KINKO_MAX_UPLOAD_BYTES": str(max_upload),
        "KINKO_SCAN_RETRY_BASE": "0.5", "KINKO_SCAN_RETRY_MAX": "2",
        "KINKO_SCAN_TIMEOUT": "20",
        "KINKO_SCANNER_PROBE_SECONDS": "1",
    })
    env.update(extra_env or {})
    stack = Stack(base=base, home=home, env=env,
                  client_url=f"https://localhost:{env['KINKO_CLIENT_PORT']}",
                  office_url=f"https://127.0.0.1:{env['KINKO_OFFICE_PORT']}",
                  clamd=clamd, clamd_dir=clamd_dir, official_dir=official, profile=PROFILE)
    if PROFILE == "scale":
        start_scale_services(stack)
        # Only `kinko init` gets the owner role: it migrates and grants.
        stack.kinko("init", env=dict(env, KINKO_DATABASE_ADMIN_URL=stack.services["pg"].admin_url))
    else:
        stack.kinko("init")
    for code, name in (("acme", "株式会社アクメ"), ("beta", "ベータ商事株式会社")):
        stack.kinko("company", "add", code, "--name", name)
        stack.kinko("user", "add", code, "hr", "--password", f"{code}-Passw0rd")
    stack.add_staff("boss", "manager")
    stack.add_staff("hana", "handler", companies="acme")
    stack.start_server()
    return stack


def start_scale_services(stack: Stack) -> None:
    """PostgreSQL, Redis and an S3 server (moto) on loopback, two buckets, and
    the environment that points kinko at them (configuration only)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import PostgresServer
    from redisserver import RedisServer
    from s3server import DUMMY_CREDENTIALS, MotoServer

    stack.services["pg"] = PostgresServer().start()
    stack.services["redis"] = RedisServer().start()
    s3 = stack.services["s3"] = MotoServer()
    s3.start()
    client = s3.client()
    stack.buckets["dropzone"] = s3.new_bucket(client)
    stack.buckets["vault"] = s3.new_bucket(client, versioned=True)
    stack.env.update({
        "KINKO_DATABASE_URL": stack.services["pg"].url(),
        "KINKO_QUEUE_URL": stack.services["redis"].url,
        "KINKO_DROPZONE_URL": f"s3://{stack.buckets['dropzone']}/kinko",
        "KINKO_VAULT_URL": f"s3://{stack.buckets['vault']}/kinko",
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": DUMMY_CREDENTIALS["region_name"],
    })
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        stack.env.pop(name, None)


def stop_scale_services(stack: Stack) -> None:
    for name in ("s3", "redis", "pg"):
        service = stack.services.pop(name, None)
        if service is not None:
            service.stop()


def embedded_only(reason: str) -> Any:
    """Skip a test on the scale profile, saying why (it inspects SQLite or local files)."""
    import pytest
    return pytest.mark.skipif(PROFILE != "embedded", reason=reason)


def scale_only(reason: str) -> Any:
    import pytest
    return pytest.mark.skipif(PROFILE != "scale", reason=reason)


def teardown_stack(stack: Stack) -> None:
    stack.stop_server()
    stack.clamd.stop()
    stop_scale_services(stack)
    if not os.environ.get("KINKO_KEEP_TEST_HOME"):
        shutil.rmtree(stack.base, ignore_errors=True)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> set[int]:
    """Children, their children and so on."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        kids = [k for k in children(frontier.pop()) if k not in found]
        found.update(kids)
        frontier += kids
    return found


def cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""
