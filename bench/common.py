"""Shared machinery of the benchmarks: the stack, payloads, timing, results.

Rules (docs/performance.md): every figure is a ratio against a reference measured in
the same run on the same machine; payloads are fresh random content every run
(clamd caches verdicts of identical bytes); everything stays on loopback.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import tests.functional.harness as harness
from scanners.clamd import ClamdClient, FdScan

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latest.json"
COMPANY = "bench"
PASSWORD = "bench-Passw0rd"  # noqa: S105 - a throwaway account of a throwaway stack
# High enough for the 1 GiB full memory run; clamd cannot scan files of 2 GiB or more.
MAX_UPLOAD = 1900 * MiB


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def env_sizes(name: str, default: str) -> list[int]:
    return [int(x) for x in (os.environ.get(name) or default).split(",") if x.strip()]


# -- payloads -------------------------------------------------------------------------

_DIGITS = bytes(b"0123456789"[i % 10] for i in range(256))
_ROW = 32  # "DDDDDDDDDDDD,DDDDDDDDDDDD,DDDDD\n": a My-Number-like column and two more
_POOL = 8 * MiB


def _keystream(seed: bytes) -> Callable[[int], bytes]:
    """Fast fresh random bytes (AES-256-CTR keystream of a per-payload random key)."""
    enc = Cipher(algorithms.AES(seed[:32]), modes.CTR(seed[32:48])).encryptor()
    return lambda n: enc.update(bytes(n))


def _csv_rows(raw: bytes) -> bytes:
    rows = bytearray(raw.translate(_DIGITS))
    n = len(rows)
    for col, ch in ((12, b","), (25, b","), (_ROW - 1, b"\n")):
        rows[col::_ROW] = ch * len(range(col, n, _ROW))
    return bytes(rows)


@dataclass
class Payload:
    """``size`` bytes of fresh content, streamed (never held whole in memory).

    ``kind`` is ``csv`` (digits-heavy CSV: 12-digit numbers, commas, newlines) or
    ``bin`` (random binary behind a PNG signature, so that the upload policy lets it
    through as ``.png``).  The same payload yields the same bytes every time it is
    iterated, so the chain and both references see identical content.
    """

    kind: str
    size: int
    seed: bytes = field(default_factory=lambda: os.urandom(48))

    @property
    def filename(self) -> str:
        return f"bench-{self.seed[:4].hex()}.{'csv' if self.kind == 'csv' else 'png'}"

    def chunks(self, chunk: int = MiB) -> Iterator[bytes]:
        stream = _keystream(self.seed)
        if self.kind == "csv":
            # Digits are made once per payload (an 8 MiB pool of fresh random rows);
            # blocks are then cut from it at random row offsets, so generating the
            # bytes costs next to nothing compared to moving them.
            pool = _csv_rows(stream(_POOL + chunk))
            header = b"employee_no,my_number,amount".ljust(_ROW - 1) + b"\n"
            head = header + pool[len(header):chunk]
            pos = 0
            first = True
            while pos < self.size:
                n = min(chunk, self.size - pos)
                if first:
                    block, first = head[:n], False
                else:
                    offset = int.from_bytes(stream(4), "big") % (_POOL // _ROW) * _ROW
                    block = pool[offset:offset + n]
                yield block
                pos += n
        else:
            pos = 0
            while pos < self.size:
                n = min(chunk, self.size - pos)
                block = stream(n)
                yield (b"\x89PNG\r\n\x1a\n" + block[8:]) if pos == 0 else block
                pos += n


class BodyReader:
    """A file-like request body with a length: requests sends Content-Length (as a
    browser does) and reads it block by block, so nothing is buffered whole."""

    def __init__(self, payload: Payload) -> None:
        self._it = payload.chunks()
        self._cur = b""
        self._pos = 0
        self._len = payload.size

    def __len__(self) -> int:
        return self._len

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            rest = [self._cur[self._pos:], *self._it]
            self._cur, self._pos = b"", 0
            return b"".join(rest)
        if self._pos >= len(self._cur):
            self._cur = next(self._it, b"")
            self._pos = 0
        out = self._cur[self._pos:self._pos + n]  # a short read is fine; b"" only at EOF
        self._pos += len(out)
        return out


def generation_seconds(payload: Payload) -> float:
    """Client-side cost of producing the bytes alone (reported, not subtracted)."""
    t0 = time.perf_counter()
    for _ in payload.chunks():
        pass
    return time.perf_counter() - t0


# -- results ---------------------------------------------------------------------------


@dataclass
class Record:
    """One line of bench/results/latest.json (../shared/contract.md, Benchmarks).

    Time records: ``value`` and ``reference`` in seconds, ``ratio`` = value/reference,
    ``target`` a ceiling on ``ratio``.  Memory records (unit ``MB``): ``value`` is the
    peak at the big size, ``reference`` the peak at the small size, ``ratio`` the growth
    (about 1 = flat), ``target`` a ceiling on ``value`` in MB.  Count records: ``target``
    is a ceiling on ``value``.  A ``target`` of None means "reported, not judged".
    """

    name: str
    value: float
    unit: str
    reference: float | None
    ratio: float | None
    target: float | None

    def ok(self) -> bool | None:
        if self.target is None:
            return None
        if self.unit == "s":
            return self.ratio is not None and self.ratio <= self.target
        return self.value <= self.target


def record(name: str, value: float, unit: str, reference: float | None,
           target: float | None) -> Record:
    ratio = value / reference if reference else None
    return Record(name, round(value, 4), unit,
                  None if reference is None else round(reference, 4),
                  None if ratio is None else round(ratio, 4), target)


def write_results(records: list[Record], path: Path = RESULTS) -> None:
    """Merge ``records`` into ``path`` by name (other benchmarks' lines are kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            merged = {r["name"]: r for r in json.loads(path.read_text())}
        except (ValueError, KeyError, TypeError):
            merged = {}
    for r in records:
        merged[r.name] = asdict(r)
    path.write_text(json.dumps(sorted(merged.values(), key=lambda r: r["name"]), indent=2)
                    + "\n")


def report(title: str, records: list[Record], details: dict[str, Any] | None = None) -> None:
    """Print the figures as JSON and as a short table."""
    print(json.dumps({"benchmark": title, "records": [asdict(r) for r in records],
                      "details": details or {}}, indent=2, default=str))
    print(table(records))


def table(records: list[Record]) -> str:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}" if abs(x) < 1000 else f"{x:.0f}"

    rows = [("name", "value", "unit", "reference", "ratio", "target", "ok")]
    for r in records:
        ok = r.ok()
        rows.append((r.name, fmt(r.value), r.unit, fmt(r.reference), fmt(r.ratio),
                     fmt(r.target), "-" if ok is None else "yes" if ok else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# -- the stack -------------------------------------------------------------------------


def _free_port() -> int:
    return harness.free_port()


@dataclass
class Bench:
    """The real stack (`kinko serve` + its own clamd), a token of an auto-pull company,
    and the minimal sink served by the same gunicorn config on another loopback port."""

    stack: harness.Stack
    token: str
    sink_url: str
    sink: subprocess.Popen[bytes]
    http: requests.Session

    @property
    def clamd_address(self) -> str:
        return self.stack.env["KINKO_CLAMD"]

    def clamd(self) -> ClamdClient:
        return ClamdClient(self.clamd_address, timeout=900)

    def _headers(self, payload: Payload) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}",
                "Content-Type": "application/octet-stream",
                "Content-Disposition":
                    f"attachment; filename*=UTF-8''{quote(payload.filename)}",
                "X-Purpose": "koyo"}

    # -- the three measurements ---------------------------------------------------------
    def time_sink(self, payload: Payload) -> float:
        """Raw HTTPS upload of the payload to the minimal sink (seconds)."""
        t0 = time.perf_counter()
        self.send_to_sink(payload)
        return time.perf_counter() - t0

    def send_to_sink(self, payload: Payload, session: requests.Session | None = None
                     ) -> None:
        r = (session or self.http).post(self.sink_url + "/", data=BodyReader(payload),
                                        headers=self._headers(payload), timeout=900)
        if r.status_code != 201 or r.json()["size"] != payload.size:
            raise RuntimeError(f"sink: {r.status_code} {r.text[:200]}")

    def time_clamd(self, payload: Payload) -> float:
        """clamd INSTREAM of the payload alone (seconds)."""
        t0 = time.perf_counter()
        result = self.clamd().scan_stream(payload.chunks())
        elapsed = time.perf_counter() - t0
        if not result.is_clean:
            raise RuntimeError(f"clamd: {result}")
        return elapsed

    def time_clamd_fd(self, payload: Payload) -> float:
        """clamd scanning the payload from a memory file (FILDES, as the client app hands
        it over when it fits, ``portal.receiptscan``): writing it there, then the scan."""
        t0 = time.perf_counter()
        scan = FdScan(self.clamd(), max_bytes=payload.size)
        for chunk in payload.chunks(64 << 10):
            scan.feed(chunk)
        result = scan.result()
        elapsed = time.perf_counter() - t0
        if not result.is_clean:
            raise RuntimeError(f"clamd: {result}")
        return elapsed

    def upload(self, payload: Payload, session: requests.Session | None = None
               ) -> requests.Response:
        return (session or self.http).post(
            self.stack.client_url + "/api/v1/uploads", data=BodyReader(payload),
            headers=self._headers(payload), timeout=900)

    def status(self, upload_id: str) -> dict[str, Any]:
        r = self.http.get(f"{self.stack.client_url}/api/v1/uploads/{upload_id}",
                          headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        r.raise_for_status()
        return dict(r.json())

    def wait_vaulted(self, upload_id: str, timeout: float = 900,
                     interval: float = 0.25) -> dict[str, Any]:
        """Poll (gently: the poll itself costs the client app CPU) until a terminal
        status.  The end time comes from the ``vaulted`` event, not from the poll."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(upload_id)
            if body["status"] in ("vaulted", "infected", "refused"):
                if body["status"] != "vaulted":
                    raise RuntimeError(f"{upload_id}: {body['status']} {body['reason_code']}")
                return body
            if time.monotonic() > deadline:
                raise RuntimeError(f"{upload_id} still {body['status']}\n"
                                   + self.stack.log_tail())
            time.sleep(interval)

    def time_chain(self, payload: Payload) -> dict[str, float]:
        """HTTPS upload until ``vaulted``: total, and where the time went (seconds)."""
        t0 = time.time()
        r = self.upload(payload)
        t_201 = time.time()
        if r.status_code != 201:
            raise RuntimeError(f"upload: {r.status_code} {r.text[:300]}")
        body = self.wait_vaulted(r.json()["id"])
        at = event_times(body)
        return {"total": at["vaulted"] - t0, "upload": t_201 - t0,
                "queue": at.get("scanning", t_201) - at["received"],
                "scan": at.get("clean", t_201) - at.get("scanning", t_201),
                "pull": at["vaulted"] - at.get("clean", t_201),
                "after_201": at["vaulted"] - t_201,
                # 1: clamd's verdict came from the scan while receiving (portal.receiptscan)
                "on_receipt": float(self.prescan(r.json()["id"]) == "clean")}

    def prescan(self, upload_id: str) -> str | None:
        with self.stack.db() as db:
            row = db.execute("SELECT prescan FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return row[0] if row else None


def event_times(body: dict[str, Any]) -> dict[str, float]:
    """status -> epoch seconds of its (first) event.  Server and client share the clock."""
    out: dict[str, float] = {}
    for e in body.get("events", []):
        at = datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
        out.setdefault(e["status"], at)
    return out


def _start_sink(stack: harness.Stack) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = open(stack.base / "sink.log", "ab")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:portal.gunicorn_conf",
         "--bind", f"127.0.0.1:{port}", "bench.sink:app"],
        env=stack.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"https://localhost:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/", verify=stack.cert, timeout=2).ok:
                return proc, url
        except (requests.ConnectionError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the sink did not start")
        time.sleep(0.3)


@contextmanager
def bench_stack() -> Iterator[Bench]:
    """Start everything; always tear it down.  ``KINKO_KEEP_TEST_HOME=1`` keeps files."""
    harness.MAX_UPLOAD = MAX_UPLOAD  # read by build_stack: upload cap and clamd limits
    stack = harness.build_stack(lambda name: Path(tempfile.mkdtemp(prefix=name)))
    sink: subprocess.Popen[bytes] | None = None
    try:
        stack.kinko("company", "add", COMPANY, "--name", "Bench", "--auto-pull")
        stack.kinko("user", "add", COMPANY, "hr", "--password", PASSWORD)
        token = stack.token(COMPANY, "hr")
        # The harness bounds a scan at 20 s (fine for tests); a 1 GiB scan needs more.
        stack.stop_server()
        stack.env["KINKO_SCAN_TIMEOUT"] = "900"
        stack.start_server()
        sink, sink_url = _start_sink(stack)
        http = requests.Session()
        http.trust_env = False
        http.verify = stack.cert
        bench = Bench(stack, token, sink_url, sink, http)
        warm_up(bench)
        yield bench
    finally:
        if sink is not None and sink.poll() is None:
            os.killpg(sink.pid, 15)
            sink.wait(30)
        harness.teardown_stack(stack)


def warm_up(bench: Bench) -> None:
    """One small file through everything first: imports, connections, caches."""
    for kind in ("csv", "bin"):
        p = Payload(kind, 2 * MiB)
        bench.time_sink(p)
        bench.time_clamd(p)
        bench.time_chain(p)


# -- processes (memory) --------------------------------------------------------------------


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may contain spaces, split after ')'.
            out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    ppid = _ppid_map()
    found, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in ppid.items() if pp == p]
        found += kids
        todo += kids
    return found


def stack_processes(stack: harness.Stack) -> dict[str, list[int]]:
    """pids of the client-app gunicorn workers and of the pipeline worker."""
    assert stack.server is not None
    procs = descendants(stack.server.pid)
    ppid = _ppid_map()
    client = [p for p in procs if "portal.client:create_app()" in cmdline(p)]
    masters = {p for p in client if ppid.get(p) == stack.server.pid}
    return {"web": [p for p in client if p not in masters],
            "worker": [p for p in procs if "portal.cli worker" in cmdline(p)]}


def rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> bool:
    """Reset VmHWM (the kernel's peak RSS) of ``pid``: clear_refs 5.  False if denied."""
    try:
        (Path("/proc") / str(pid) / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


def scan_files_kb(pid: int) -> int:
    """Bytes (KiB) of the memory files for clamd (``scanners.clamd.FdScan``) ``pid`` holds.

    Not part of RSS (written, never mapped): RAM all the same, so it is reported."""
    total = 0
    fds = Path("/proc") / str(pid) / "fd"
    try:
        entries = list(fds.iterdir())
    except OSError:
        return 0
    for fd in entries:
        try:
            if os.readlink(fd).startswith("/memfd:kinko-scan"):
                total += fd.stat().st_size
        except OSError:
            continue
    return total // 1024


class RssSampler:
    """Samples VmRSS of every pid every ``interval`` s; keeps the per-pid maximum (and
    that of the memory files for clamd, :func:`scan_files_kb`)."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[int, int] = dict.fromkeys(pids, 0)
        self.files_peak: dict[int, int] = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], rss_kb(p))
                self.files_peak[p] = max(self.files_peak[p], scan_files_kb(p))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mb(kb: int) -> float:
    return kb * 1024 / 1e6
