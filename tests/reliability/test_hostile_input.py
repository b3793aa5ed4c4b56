"""Hostile input and broken databases (issue 16, part 8) against a real `azamrecon serve` on loopback:

8c  a hung MariaDB (a frozen TcpProxy): callbacks are answered 503-spooled well before nginx's proxy timeout
8d  a 70,000-byte User-Agent: answered normally, stored with the header capped, no error line
8e  hostile portal input (ids, amounts, msisdn, nesting): 4xx, never 5xx, nothing created
8f  a bad DATABASE_URL driver or argument: one error line through the CLI

Slow clients and read timeouts (8a, 8b): test_hostile_http.py.
Every loop is bounded in count and time; every process and socket is closed by the test."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.reliability.helpers import add_donation_row, add_patient_row, callback_json, with_port
from tests.reliability.hostile import CHECKOUT, DATABASES, KEY, STATUS, backend_for, timed
from tests.servers import ServerProcess, config_settings, event_rows, run_cli, write_config
from tests.tcp_proxy import TcpProxy

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def proxy_read_timeout() -> float:
    """nginx's proxy_read_timeout as docs/deploy.md sets it (seconds)."""
    found = re.findall(r"proxy_read_timeout\s+(\d+)s;", DEPLOY.read_text(encoding="utf-8"))
    assert len(set(found)) == 1, f"docs/deploy.md should set one proxy_read_timeout, found {found}"
    return float(found[0])


def error_lines(log_dir: Path) -> list[str]:
    lines = []
    for path in log_dir.rglob("*.log"):
        lines += [
            line
            for line in path.read_text(errors="replace").splitlines()
            if "Error processing Azam Pay callback" in line
        ]
    return lines


# --- 8a ---------------------------------------------------------------------------------------------


# --- 8c ---------------------------------------------------------------------------------------------


@pytest.mark.mysql
def test_hung_mariadb_answers_503_spooled_before_the_proxy_timeout(mysql_backend, tmp_path, figures):
    """The server freezes (a TcpProxy that stops moving bytes and holds new connections). Before: 30 s
    read timeouts, equal to nginx's proxy_read_timeout, so nginx answered 504 while the receiver spooled."""
    backend = mysql_backend
    add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", add_patient_row(backend.engine))
    database_timeout = 4.0  # receiver.database_timeout_seconds' default
    bound = 2 * database_timeout + 2  # a hung ping, then the reconnect's handshake; plus the spool
    spool = tmp_path / "spool"
    with TcpProxy("127.0.0.1", urlsplit(backend.url).port or 3306) as proxy:
        config = write_config(
            tmp_path / "serve.yaml",
            config_settings(
                backend, **{"database.url": with_port(backend.url, proxy.port), "receiver.spool_dir": str(spool)}
            ),
        )
        with ServerProcess(config, log_dir=tmp_path / "server") as server:
            before = httpx.post(
                server.callback_url,
                content=callback_json("RHCI-DN-1-20260114093000", "before"),
                headers={"content-type": "application/json"},
                timeout=60,
            )
            proxy.freeze()
            answers: list[tuple[int, float]] = []

            def send(marker: str) -> None:
                response, seconds = timed(
                    lambda: httpx.post(
                        server.callback_url,
                        content=callback_json("RHCI-DN-1-20260114093000", marker),
                        headers={"content-type": "application/json"},
                        timeout=60,
                    )
                )
                answers.append((response.status_code, seconds))

            senders = [threading.Thread(target=send, args=(f"hung-{i}",), daemon=True) for i in range(4)]
            for sender in senders:
                sender.start()
                time.sleep(0.5)  # spread over the hang: later ones queue behind a batch already waiting
            for sender in senders:
                sender.join(70)
            proxy.thaw()
    spooled = b"".join(
        base64.b64decode(json.loads(line)["body_b64"])
        for path in spool.rglob("*.jsonl*")
        for line in path.read_text().splitlines()
        if line
    )
    worst = max(seconds for _, seconds in answers)
    nginx = proxy_read_timeout()
    figures.record(
        "8c. hung database vs proxy timeout (mysql)",
        f"MariaDB frozen (TcpProxy holds every connection) while 4 callbacks arrive 0.5 s apart; "
        f"receiver.database_timeout_seconds {database_timeout:g}, nginx proxy_read_timeout {nginx:g} s",
        len(answers),
        {
            "answers": " ".join(str(code) for code, _ in sorted(answers)),
            "worst seconds to answer": round(worst, 1),
            "nginx proxy_read_timeout s": nginx,
            "spooled": sum(spooled.count(f"hung-{i}".encode()) > 0 for i in range(4)),
        },
    )
    assert before.status_code == 200
    assert [code for code, _ in answers] == [503] * 4, answers
    assert worst < bound < nginx / 2, (worst, bound, nginx)
    assert all(f"hung-{i}".encode() in spooled for i in range(4))


def test_locked_sqlite_answers_503_spooled_before_the_proxy_timeout(sqlite_backend, tmp_path, figures):
    """Another process holds SQLite's write lock. Before: a failed group was retried row by row, each row
    waiting busy_timeout again: 10 callbacks at once waited 10 timeouts."""
    backend = sqlite_backend
    add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", add_patient_row(backend.engine))
    busy, callbacks = 1.0, 10
    bound = 2 * busy + 1.5  # the group ahead's wait, its own, and the spool
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "serve.yaml",
        config_settings(backend, **{"database.busy_timeout_ms": int(busy * 1000), "receiver.spool_dir": str(spool)}),
    )
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        answers: list[tuple[int, float]] = []
        client = httpx.Client(limits=httpx.Limits(max_connections=callbacks), timeout=60)

        def send(marker: str) -> None:
            response, seconds = timed(
                lambda: client.post(
                    server.callback_url,
                    content=callback_json("RHCI-DN-1-20260114093000", marker),
                    headers={"content-type": "application/json"},
                )
            )
            answers.append((response.status_code, seconds))

        locker = sqlite3.connect(backend.url.split("sqlite:///", 1)[1], timeout=5)
        locker.isolation_level = None
        locker.execute("BEGIN IMMEDIATE")  # the write lock, held as a long rebuild or a sqlite3 shell would
        try:
            senders = [threading.Thread(target=send, args=(f"locked-{i}",), daemon=True) for i in range(callbacks)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(60)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
            client.close()
    worst = max(seconds for _, seconds in answers)
    nginx = proxy_read_timeout()
    figures.record(
        "8c. hung database vs proxy timeout (sqlite)",
        f"SQLite's write lock held by another process while {callbacks} callbacks arrive at once; "
        f"database.busy_timeout_ms {busy * 1000:g}, nginx proxy_read_timeout {nginx:g} s",
        len(answers),
        {"answers": " ".join(sorted({str(code) for code, _ in answers})), "worst seconds to answer": round(worst, 1)},
    )
    assert [code for code, _ in answers] == [503] * callbacks, answers
    assert worst < bound, (worst, bound)


# --- 8d ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("db", DATABASES)
def test_a_70000_byte_user_agent_is_capped_and_stored(db, request, tmp_path, figures):
    """Before, on MariaDB: 503 (the headers column overflowed), a spooled row `ingest-spool` cut silently,
    and an "Error processing Azam Pay callback" line per request."""
    backend = backend_for(db, request)
    add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", add_patient_row(backend.engine))
    config = write_config(tmp_path / "serve.yaml", config_settings(backend))
    size = 70_000
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        answers = [
            httpx.post(
                server.callback_url,
                content=callback_json(reference, f"ua-{i}"),
                timeout=30,
                headers={"content-type": "application/json", "user-agent": "U" * size, "x-request-id": "R" * size},
            )
            for i, reference in enumerate(("RHCI-DN-1-20260114093000", "RHCI-DN-404-20260114093000"))
        ]
    rows = event_rows(backend.engine)
    stored = [json.loads(row.headers) for row in rows]
    marker = f"...[truncated: {size} bytes]"
    errors = error_lines(tmp_path)
    spooled = [path for path in (tmp_path / "spool").rglob("*") if path.is_file() and path.stat().st_size]
    figures.record(
        f"8d. 70,000-byte header ({db})",
        f"a {size:,}-byte User-Agent and X-Request-Id on a known and an unknown donation's callback",
        len(answers),
        {
            "answers": " ".join(str(a.status_code) for a in answers),
            "stored": len(rows),
            "stored header bytes": max(len(row.headers.encode()) for row in rows),
            "error lines": len(errors),
            "spooled": len(spooled),
        },
    )
    assert [a.status_code for a in answers] == [200, 404]
    assert len(rows) == 2 and not errors and not spooled
    for headers in stored:
        assert headers["user-agent"] == "U" * 512 + marker and headers["x-request-id"] == "R" * 512 + marker


# --- 8e ---------------------------------------------------------------------------------------------

HUGE = 10**30
CHECKOUT_BODIES = {  # name: (changes to a valid body, or raw bytes), and the detail the 4xx must name
    "patient_id 10^30": ({"patient_id": HUGE}, "patient_id"),
    "patient_id 2^63": ({"patient_id": 2**63}, "patient_id"),
    "patient_id -1": ({"patient_id": -1}, "patient_id"),
    "patient_id list": ({"patient_id": [1]}, "patient_id"),
    "amount 10^30": ({"amount": HUGE}, "amount"),
    "amount '1e3'": ({"amount": "1e3"}, "amount"),
    "amount '1_000'": ({"amount": "1_000"}, "amount"),
    "amount full-width": ({"amount": "１０００"}, "amount"),
    "amount '10,00'": ({"amount": "10,00"}, "amount"),
    "amount ' 1000'": ({"amount": " 1000"}, "amount"),
    "amount 'NaN'": ({"amount": "NaN"}, "amount"),
    "amount 'sNaN'": ({"amount": "sNaN"}, "amount"),
    "amount 'Infinity'": ({"amount": "Infinity"}, "amount"),
    "amount '1000.123'": ({"amount": "1000.123"}, "amount"),
    "amount 5000 digits": ({"amount": "9" * 5000}, "amount"),
    "amount object": ({"amount": {"value": 1}}, "amount"),
    "patient_amount 'sNaN'": ({"patient_amount": "sNaN"}, "patient_amount"),
    "support_amount '-0'": ({"support_amount": "-0"}, "support_amount"),
    "msisdn 10^30": ({"msisdn": HUGE}, "msisdn"),
    "msisdn Arabic-Indic digits": ({"msisdn": "٠٧١٢٣٤٥٦٧٨"}, "msisdn"),
    "msisdn 5000 digits": ({"msisdn": "0" * 5000}, "msisdn"),
    "provider number": ({"provider": 5}, "provider"),
    "currency number": ({"currency": 5}, "currency"),
    "currency unknown": ({"currency": "X" * 300}, "currency"),
    "JSON nested 8000 deep": (b"[" * 8000, "invalid JSON"),
    "JSON integer of 5000 digits": (b'{"patient_id": ' + b"1" * 5000 + b"}", "invalid JSON"),
    "not UTF-8": (b'{"amount": "\xff"}', "invalid JSON"),
    "JSON array": (b"[]", "invalid JSON"),
}
STATUS_IDS = ["1" * 19, "0", "-1", "\u00b2", "1e3", "", "9" * 400, "1 ", "０"]


@pytest.mark.parametrize("db", DATABASES)
def test_hostile_portal_input_is_4xx_never_5xx(db, request, tmp_path, figures):
    backend = backend_for(db, request)
    valid = {"patient_id": None, "amount": "1000", "msisdn": "0712345678", "provider": "Airtel"}
    config = write_config(tmp_path / "serve.yaml", config_settings(backend, **{"receiver.checkout_api_key": KEY}))
    answers = {}
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        for name, (change, _) in CHECKOUT_BODIES.items():
            content = change if isinstance(change, bytes) else json.dumps(valid | change).encode()
            answers[name] = httpx.post(
                server.url + CHECKOUT,
                content=content,
                headers={"x-api-key": KEY, "content-type": "application/json"},
                timeout=30,
            )
        answers["body over 8 KiB, chunked"] = httpx.post(
            server.url + CHECKOUT,
            content=iter([b"{" + b" " * 4096] * 3),
            headers={"x-api-key": KEY, "content-type": "application/json"},
            timeout=30,
        )
        for raw in STATUS_IDS:
            answers[f"status {raw[:20]!r}"] = httpx.get(
                server.url + STATUS, params={"donation_id": raw}, headers={"x-api-key": KEY}, timeout=30
            )
        output = server.output()
    codes = {name: answer.status_code for name, answer in answers.items()}
    figures.record(
        f"8e. hostile portal input ({db})",
        "checkout ids, amounts, msisdn, provider, currency out of range or in another grammar, "
        "8000-deep JSON, a 5000-digit integer, not UTF-8, an over-size chunked body; status donation_id",
        len(answers),
        {
            "5xx": sum(1 for code in codes.values() if code >= 500),
            "tracebacks in the server log": output.count("Traceback"),
            "donations created": backend.scalar("SELECT COUNT(*) FROM donations"),
        },
    )
    assert {name: code for name, code in codes.items() if not 400 <= code < 500} == {}
    for name, (_, detail) in CHECKOUT_BODIES.items():
        assert codes[name] == 400 and detail in answers[name].json()["detail"], (name, answers[name].text)
    assert codes["body over 8 KiB, chunked"] == 413
    assert "Traceback" not in output
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 0


# --- 8f ---------------------------------------------------------------------------------------------

BAD_URLS = [
    "postgresql+nodriver://x/y",
    "mysql+nodriver://u:secret@db/x",
    "sqlite+nodriver:///x.db",
    "mysql+pymysql://u:secret@127.0.0.1:1/x?bogus=1",
    "mysql+pymysql://u:secret@127.0.0.1:1/x?connect_timeout=secret",
]


def test_a_bad_database_url_is_one_error_line(tmp_path, figures):
    """Through the real CLI, as an operator runs it. Before: `mysql+nodriver://` printed a 64-line traceback."""
    config = write_config(
        tmp_path / "config.yaml",
        {"logging.dir": str(tmp_path / "logs"), "privacy.key_file": str(tmp_path / "azamrecon.key")},
    )
    runs = [(url, "report") for url in BAD_URLS] + [(BAD_URLS[1], "init")]
    results = {
        (url, command): run_cli(command, config_path=config, env={"DATABASE_URL": url, "AZAMRECON_DEBUG": ""})
        for url, command in runs
    }
    lines = {key: [line for line in done.stderr.splitlines() if line.strip()] for key, done in results.items()}
    figures.record(
        "8f. bad DATABASE_URL",
        "unknown drivers (postgresql+, mysql+, sqlite+nodriver), an argument the driver does not take, "
        "an argument it cannot convert; `report` and `init` as subprocesses",
        len(results),
        {
            "worst lines on stderr": max(len(found) for found in lines.values()),
            "tracebacks": sum("Traceback" in done.stderr for done in results.values()),
            "exit codes": " ".join(sorted({str(done.returncode) for done in results.values()})),
        },
    )
    for key, done in results.items():
        assert done.returncode == 2 and "Traceback" not in done.stderr, (key, done.stderr[-500:])
        assert len(lines[key]) == 1 and lines[key][0].startswith("error: invalid config value for database.url"), (
            key,
            lines[key],
        )
        assert "secret" not in lines[key][0]
