"""A throwaway PostgreSQL cluster on loopback (test helper).

Started from Debian's server binaries (``/usr/lib/postgresql/<v>/bin``), which
``make test`` installs.  PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` system user the Debian package creates.

The cluster is laid out the way docs/deploy.md asks production to be:

* ``kinko_owner`` owns the database and runs the migrations (``kinko init``
  with ``KINKO_DATABASE_ADMIN_URL``);
* ``kinko_app`` is what the web processes and the worker connect as: it can
  read and write the tables but, once ``kinko init`` has granted its rights,
  cannot UPDATE, DELETE or TRUNCATE audit rows.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from s3server import free_port  # one helper for every local test server

OWNER, OWNER_PASSWORD = "kinko_owner", "owner-Passw0rd"
APP, APP_PASSWORD = "kinko_app", "app-Passw0rd"


def bindir() -> Path | None:
    """The newest installed major version's bin directory."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found.sort(key=lambda bins: int(bins.parent.name) if bins.parent.name.isdigit() else 0)
    return found[-1] if found else None



class PostgresServer:
    def __init__(self) -> None:
        bins = bindir()
        if bins is None:
            raise RuntimeError("PostgreSQL server binaries not found: `make test` installs them")
        self.bin = bins
        self.port = free_port()
        # Not under the suite's 0700 temp dirs: the postgres user must reach it.
        self.base = Path(tempfile.mkdtemp(prefix="kpg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "run"
        self.log = self.base / "postgres.log"
        self._as_postgres = os.getuid() == 0
        self.running = False

    # -- process -------------------------------------------------------------
    def _run(self, *args: str, check: bool = True, input: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, input=input,
                              timeout=timeout, cwd=self.base)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {proc.stderr[-2000:]}\n{self.log_tail()}")
        return proc

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> PostgresServer:
        self.sockets.mkdir()
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chown(self.sockets, pw.pw_uid, pw.pw_gid)
        pwfile = self.base / "pw"
        pwfile.write_text("super-Passw0rd\n")
        if self._as_postgres:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth-local=peer" if self._as_postgres else "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                  "--locale=C.UTF-8")
        pwfile.unlink()
        opts = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200 -c timezone=Asia/Tokyo")
        # timezone=Asia/Tokyo on purpose: kinko must not depend on the server's zone.
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", opts, "-w", "-t", "60", "start")
        self.running = True
        self.psql(f"CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PASSWORD}';"
                  f"CREATE ROLE {APP} LOGIN PASSWORD '{APP_PASSWORD}';"
                  f"CREATE DATABASE kinko OWNER {OWNER};")
        # Nobody but the owner creates objects; the app role only gets what
        # `kinko init` grants it.
        self.psql("REVOKE ALL ON DATABASE kinko FROM PUBLIC;"
                  f"GRANT CONNECT ON DATABASE kinko TO {APP};", db="postgres")
        return self

    def psql(self, sql: str, db: str = "postgres") -> str:
        proc = self._run(self.tool("psql"), "-h", str(self.sockets), "-p", str(self.port),
                         "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-X", "-q",
                         "-A", "-t", input=sql)
        return proc.stdout

    def tool(self, name: str) -> str:
        path = self.bin / name
        return str(path) if path.exists() else name

    def url(self, user: str = APP, password: str = APP_PASSWORD, db: str = "kinko") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{db}"

    @property
    def admin_url(self) -> str:
        return self.url(OWNER, OWNER_PASSWORD)

    def dump(self, path: Path, db: str = "kinko") -> None:
        """pg_dump in the custom format, as the backup drill does."""
        out = subprocess.run(
            [self.tool("pg_dump"), "-Fc", "-d", self.url(OWNER, OWNER_PASSWORD, db)],
            capture_output=True, timeout=300, check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode(errors="replace")[-2000:])
        path.write_bytes(out.stdout)

    def stop(self) -> None:
        if self.running:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "-t", "30", "stop", check=False)
            self.running = False
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

