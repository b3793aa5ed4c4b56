"""Shared benchmark machinery: databases, server subprocesses, load generators, tables.

Loopback only (127.0.0.1). Every load loop is bounded in request count AND in time.

The Python load generator runs in its own process (`python -m bench.common loadgen`, spec on stdin,
JSON result on stdout) so it never shares the server's GIL. `wrk` is used instead when installed and
asked for (a generated Lua script posts realistic callback bodies, varying utilityref).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.config import write_config_file as write_config  # noqa: F401  (re-exported for tests/benches)
from sandbox.testing import free_port, stop_process_group, wait_healthy

REPO = Path(__file__).resolve().parents[1]
CALLBACK_PATH = "/api/v1.0/donors/payment/azampay/callback/"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/azamrecon_bench"
REFERENCE_STAMP = "20260114093012"
DONATION_AMOUNT = Decimal("25000")

# A realistic callback (tests/fixtures/azampay/callback_live_shape_success.json), with placeholders for
# the utilityref (a known donation) and the transaction references (unique per request).
_CALLBACK_TEMPLATE: dict[str, Any] = {
    "message": "SUCCESS",
    "user": None,
    "password": None,
    "clientId": None,
    "transactionstatus": "success",
    "operator": "Halopesa",
    "reference": "@TID@",
    "externalreference": "@TID@",
    "utilityref": "@REF@",
    "amount": str(DONATION_AMOUNT),
    "transid": "@TID@",
    "msisdn": "0628630936",
    "mnoreference": "8d2e6a41-93b7-4c0e-a1f5-2b7d9c03e6aa",
    "submerchantAcc": None,
    "additionalProperties": {},
}


def callback_template() -> str:
    """The callback body as a %-template; placeholders in document order: reference, externalreference,
    utilityref, transid, i.e. `template % (tid, tid, utilityref, tid)`."""
    text = json.dumps(_CALLBACK_TEMPLATE, indent=2)
    assert "%" not in text
    return text.replace("@REF@", "%s").replace("@TID@", "%s")


def callback_body(reference: str, tid: str) -> bytes:
    return (callback_template() % (tid, tid, reference, tid)).encode()


def donation_reference(donation_id: int) -> str:
    return f"RHCI-DN-{donation_id}-{REFERENCE_STAMP}"


# --- machine ----------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def host_speed_ms(steps: int = 5_000_000) -> float:
    """Median of three timings of a fixed pure-Python loop. The VM's speed moves by up to 2x within an
    hour (other guests on the host); this figure, printed with every table, says how fast it was."""
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for step in range(steps):
            total += step
        timings.append((time.perf_counter() - started) * 1000)
    return sorted(timings)[1]


def machine_line() -> str:
    m = machine()
    return (
        f"{m['date']} | {m['cores']} cores, {m['cpu']} | Python {m['python']} | Linux {m['kernel']}"
        f" | host speed: 5M-step Python loop {host_speed_ms():.0f} ms (lower is faster)"
    )


# --- processes --------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZAM") and k not in ("DATABASE_URL", "TOKEN")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Process:
    """A subprocess in its own session, stopped with SIGTERM to its group (SIGKILL after a timeout)."""

    def __init__(self, command: Sequence[str], log_dir: Path, name: str, env: Mapping[str, str] | None = None):
        self.command = list(command)
        self.log_dir = Path(log_dir)
        self.name = name
        self.env = {**_env(), **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=self.env,
            stdout=open(self.log_dir / f"{self.name}.stdout", "wb"),
            stderr=open(self.log_dir / f"{self.name}.stderr", "wb"),
            start_new_session=True,
        )
        return self

    def output(self) -> str:
        parts = []
        for suffix in ("stdout", "stderr"):
            path = self.log_dir / f"{self.name}.{suffix}"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User+system CPU of the process and its children (uvicorn workers) so far."""
        import psutil

        if not self.alive():
            return 0.0
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def stop(self, timeout: float = 15.0) -> None:
        process = self.process
        if process is None:
            return
        stop_process_group(process, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class HttpServer(Process):
    """An HTTP server subprocess on 127.0.0.1:port, ready when GET /healthz answers 200."""

    def __init__(self, command, port: int, log_dir: Path, name: str, env=None):
        super().__init__(command, log_dir, name, env)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> HttpServer:
        super().start()
        problem = wait_healthy(self.url, self.process, timeout)
        if problem is None:
            return self
        self.stop()
        raise RuntimeError(f"{self.name} {problem}:\n{self.output()[-3000:]}")


def serve_process(config_path: Path, log_dir: Path, workers: int | None = None, name: str = "serve") -> HttpServer:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "jobs.cli",
        "serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if workers:
        command += ["--workers", str(workers)]
    return HttpServer(command, port, log_dir, name)


def noop_process(log_dir: Path, workers: int = 1) -> HttpServer:
    port = free_port()
    command = [sys.executable, "-m", "bench.common", "noop", "--port", str(port), "--workers", str(workers)]
    return HttpServer(command, port, log_dir, "noop")


# --- the no-op ASGI app (the HTTP ceiling) ----------------------------------------------------------

_NOOP_BODY = b'{"status":"received"}'
_NOOP_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_NOOP_BODY)).encode())]


async def noop_app(scope, receive, send):
    """Reads the request body and answers what the receiver answers for a known donation; nothing else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _NOOP_HEADERS})
    await send({"type": "http.response.body", "body": _NOOP_BODY})


def run_noop(port: int, workers: int) -> None:
    """The no-op app under exactly the uvicorn settings `azamrecon serve` uses (jobs/commands/serve.py)."""
    import importlib.util

    import uvicorn

    uvicorn.run(
        "bench.common:noop_app",
        host="127.0.0.1",
        port=port,
        workers=workers,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=15,
        server_header=False,
    )


# --- databases --------------------------------------------------------------------------------------


def database_config(url: str):
    from pipeline.sections import DatabaseConfig

    return DatabaseConfig(url=url)


def engine_for(url: str):
    from pipeline.db import make_engine

    return make_engine(database_config(url))


def fresh_sqlite(directory: Path) -> str:
    from pipeline.schema import upgrade

    path = Path(directory) / "azamrecon.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    engine = engine_for(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def mysql_url() -> str:
    return os.environ.get("AZAMRECON_BENCH_MYSQL_URL", DEFAULT_MYSQL_URL)


def fresh_mysql(url: str | None = None) -> str:
    """Drop and recreate the bench database (never anything else), migrate it; return its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from pipeline.schema import upgrade

    url = url or mysql_url()
    parsed = make_url(url)
    name = parsed.database
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"error: AZAMRECON_BENCH_MYSQL_URL must name a plain database, got {name!r}")
    admin = create_engine(parsed.set(database=""), connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            connection.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    finally:
        admin.dispose()
    engine = engine_for(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def mysql_reachable(url: str | None = None) -> str | None:
    """None when the server answers, else the reason."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        admin = create_engine(make_url(url or mysql_url()).set(database=""), connect_args={"connect_timeout": 3})
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
        admin.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def seed_donations(url: str, count: int, status: str = "PENDING", created_now: bool = False) -> list[int]:
    """`count` PENDING donations with ids 1..count and references donation_reference(id), in one insert."""
    from sqlalchemy import insert

    from pipeline.models import Donation

    created = datetime.now(UTC) if created_now else datetime(2026, 1, 14, 9, 30, tzinfo=UTC)
    rows = [
        dict(
            id=i,
            amount=DONATION_AMOUNT,
            currency="TZS",
            patient_amount=DONATION_AMOUNT,
            support_amount=Decimal("0"),
            charge_amount=DONATION_AMOUNT,
            charge_currency="TZS",
            msisdn="255628630936",
            provider="Halopesa",
            external_reference=donation_reference(i),
            created_at=created,
            status=status,
        )
        for i in range(1, count + 1)
    ]
    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(Donation.__table__), rows)
    finally:
        engine.dispose()
    return list(range(1, count + 1))


def count_events(engine) -> int:
    from sqlalchemy import func, select

    from pipeline.models import PaymentEvent

    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(PaymentEvent.__table__)).scalar())


def settle_count(engine, timeout: float = 5.0) -> int:
    """The event count once it stops moving (requests cut at a load generator's stop may still commit)."""
    deadline = time.monotonic() + timeout
    last = count_events(engine)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = count_events(engine)
        if now == last:
            return now
        last = now
    return last


def storage_ceiling(url: str, seconds: float, max_rows: int = 200_000) -> dict[str, float]:
    """The database's raw durable single-row commit rate: INSERT one payment_events row + COMMIT, in a
    loop, on a DBAPI connection with the engine's durability settings (SQLite WAL + synchronous as
    configured, FULL by default; MariaDB as the server is configured). Bounded in time and rows."""
    import hashlib

    engine = engine_for(url)
    body = callback_body(donation_reference(1), "ceiling")
    digest = hashlib.sha256(body).hexdigest()
    received = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    sqlite = url.startswith("sqlite")
    marker = "?" if sqlite else "%s"
    sql = (
        "INSERT INTO payment_events (received_at, source, body, body_sha256, content_type, remote_addr, headers, utilityref, "
        "externalreference, transaction_ref, status_raw, status, amount, operator, msisdn, auth) VALUES ("
        + ", ".join([marker] * 16)
        + ")"
    )
    amount = 2500000 if sqlite else "25000.00"  # Money: integer cents on SQLite, DECIMAL on MariaDB
    params = (
        received,
        "callback",
        body,
        digest,
        "application/json",
        "127.0.0.1",
        "{}",
        donation_reference(1),
        "c",
        "c",
        "success",
        "SUCCESS",
        amount,
        "Halopesa",
        "255628630936",
        "n/a",
    )
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        rows = 0
        started = time.perf_counter()
        deadline = started + seconds
        while rows < max_rows and time.perf_counter() < deadline:
            if sqlite:
                cursor.execute("BEGIN")
            cursor.execute(sql, params)
            raw.commit() if not sqlite else cursor.execute("COMMIT")
            rows += 1
        elapsed = time.perf_counter() - started
        cursor.close()
    finally:
        raw.close()
        engine.dispose()
    return {"rows": rows, "seconds": elapsed, "rate": rows / elapsed if elapsed else 0.0}


# --- load generators --------------------------------------------------------------------------------


@dataclass
class LoadResult:
    driver: str
    connections: int
    seconds: float  # measured window
    sent: int
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    cut: int = 0  # requests in flight when the generator stopped (sent, never answered)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    port: int,
    *,
    connections: int,
    seconds: float,
    references: Sequence[str],
    tag: str,
    max_requests: int = 2_000_000,
    driver: str = "python",
    workdir: Path | None = None,
) -> LoadResult:
    if driver == "wrk":
        return _run_wrk(port, connections=connections, seconds=seconds, references=references, tag=tag, workdir=workdir)
    spec = {
        "port": port,
        "path": CALLBACK_PATH,
        "connections": connections,
        "seconds": seconds,
        "max_requests": max_requests,
        "references": list(references),
        "template": callback_template(),
        "tag": tag,
    }
    timeout = seconds + 60
    done = subprocess.run(
        [sys.executable, "-m", "bench.common", "loadgen"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(done.stdout)
    data["statuses"] = {int(k): v for k, v in data["statuses"].items()}
    return LoadResult(driver="python", **data)


async def _loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed loop: each connection sends a request, waits for the whole answer, sends the next.
    New requests stop at the deadline or at max_requests; answers in flight are awaited (bounded)."""
    port, path, template, refs, tag = spec["port"], spec["path"], spec["template"], spec["references"], spec["tag"]
    max_requests = int(spec["max_requests"])
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nUser-Agent: azamrecon-bench\r\nContent-Length: "
    ).encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    state = {"sent": 0, "errors": 0, "last": 0.0}
    perf = time.perf_counter
    nrefs = len(refs)
    started = perf()
    deadline = started + float(spec["seconds"])

    async def connection(index: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (TimeoutError, OSError):
            state["errors"] += 1
            return
        try:
            while state["sent"] < max_requests and perf() < deadline:
                n = state["sent"]
                state["sent"] = n + 1
                tid = f"{tag}{n:09d}"
                body = (template % (tid, tid, refs[n % nrefs], tid)).encode()
                t0 = perf()
                writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = 0
                for line in header.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await asyncio.wait_for(reader.readexactly(length), 30)
                t1 = perf()
                latencies.append(t1 - t0)
                status = int(header[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                state["last"] = t1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            state["errors"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(int(spec["connections"]))))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    answered = sum(statuses.values())
    return {
        "connections": int(spec["connections"]),
        "seconds": (state["last"] or perf()) - started,
        "sent": state["sent"],
        "statuses": statuses,
        "errors": state["errors"],
        "cut": state["sent"] - answered,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
    }


_WRK_SCRIPT = r"""
-- generated by bench.common: posts callbacks for known donations, varying utilityref; counts answers
local refs = {%(refs)s}
local template = %(template)s
local tag = "%(tag)s"
local headers = {["Content-Type"] = "application/json", ["User-Agent"] = "azamrecon-bench-wrk"}
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  ok = 0
  other = 0
end

function request()
  sent = sent + 1
  local tid = tag .. id .. "-" .. sent
  local body = string.format(template, tid, tid, refs[(sent + id * 7919) %% #refs + 1], tid)
  return wrk.format("POST", "%(path)s", headers, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local s, o, x = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    o = o + t:get("ok")
    x = x + t:get("other")
  end
  local e = summary.errors
  io.write(string.format('BENCHJSON {"sent": %%d, "ok": %%d, "other": %%d, "us": %%d, "p50": %%d, "p99": %%d, "max": %%d, "errors": %%d}\n',
    s, o, x, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _run_wrk(
    port: int, *, connections: int, seconds: float, references: Sequence[str], tag: str, workdir: Path | None
) -> LoadResult:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="azamrecon-wrk-"))
    script = workdir / f"wrk-{tag}.lua"
    script.write_text(
        _WRK_SCRIPT
        % {
            "refs": ", ".join(_lua_string(r) for r in references),
            "template": _lua_string(callback_template()),
            "tag": tag,
            "path": CALLBACK_PATH,
        }
    )
    threads = 1 if connections < 8 else 2
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((out for out in done.stdout.splitlines() if out.startswith("BENCHJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")
    data = json.loads(line[len("BENCHJSON ") :])
    statuses = {200: data["ok"]}
    if data["other"]:
        statuses[0] = data["other"]  # non-2xx (wrk's Lua API does not keep the codes apart here)
    return LoadResult(
        driver="wrk",
        connections=connections,
        seconds=data["us"] / 1e6,
        sent=data["sent"],
        statuses=statuses,
        errors=data["errors"],
        cut=0,  # set by the caller from the database: wrk abandons the answers in flight at its stop
        p50_ms=data["p50"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
    )


# --- tables -----------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (readable as plain text too)."""
    rows = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        out.append(
            "| "
            + " | ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True))
            + " |"
        )
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "-+.") and text != "-"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


# --- entry point for the helper subprocesses --------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.common")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("loadgen", help="run the Python load generator (spec JSON on stdin)")
    noop = sub.add_parser("noop", help="run the no-op ASGI app under uvicorn on 127.0.0.1")
    noop.add_argument("--port", type=int, required=True)
    noop.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "loadgen":
        spec = json.loads(sys.stdin.read())
        try:
            import uvloop

            result = uvloop.run(_loadgen(spec))
        except ImportError:
            result = asyncio.run(_loadgen(spec))
        sys.stdout.write(json.dumps(result))
        return 0
    run_noop(args.port, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
