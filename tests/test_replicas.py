"""Three daemons on one database: each source polled once per interval, each message sent once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

from sqlmodel import Session, select

from monitor.config import load_config
from monitor.store import OutboxMessage, make_engine
from tests.support.configs import write_config
from tests.support.http_server import Reply, Request

INTERVAL = 3
LEASE = 6
RUN_SECONDS = 24
# The longest a source may go unpolled: a dead replica's lease must run out first, then the
# next tick comes. Counting polls instead would make the test depend on the machine's load.
LONGEST_GAP = LEASE + 2 * INTERVAL
SOURCES = ["alpha", "beta", "gamma"]
TEMPLATE = ("<item><guid>{source}-{n}</guid><description>Harrowgate High lad {n} from {source} says "
            "hes bringing a knife in tomorrow to sort out group {source}{n}</description>"
            "<link>https://forum.example.org/{source}/{n}</link></item>")


def growing_feed(source: str, started: float):
    """A feed that gains one flagged item every INTERVAL seconds."""
    def reply(_request: Request) -> Reply:
        count = 1 + int((time.monotonic() - started) // INTERVAL)
        items = "".join(TEMPLATE.format(source=source, n=n) for n in range(count))
        return Reply(body=f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
                          f"{items}</channel></rss>", content_type="application/rss+xml")
    return reply


def test_three_replicas_poll_once_per_interval_and_send_once(tmp_path, http_server, smtp_server,
                                                             monkeypatch):
    started = time.monotonic()
    for source in SOURCES:
        http_server.route(f"/{source}", growing_feed(source, started))
    monkeypatch.setenv("SW_TEST_SMTP_PASSWORD", smtp_server.password)
    monkeypatch.setenv("SCHOOLWATCH_MIN_INTERVAL", "1")
    config = write_config(
        tmp_path,
        [{"id": s, "school": "harrowgate", "connector": "rss", "interval": INTERVAL,
          "options": {"url": f"{http_server.url}/{s}"}} for s in SOURCES],
        smtp={"host": "127.0.0.1", "port": smtp_server.port, "username": smtp_server.username,
              "password": {"env": "SW_TEST_SMTP_PASSWORD"}, "ca_file": smtp_server.ca_file(tmp_path),
              "timeout": 5},
        extra=f'[scheduler]\njitter = 0\noutbox_interval = "5s"\nreplicas = true\nlease = "{LEASE}s"\n'
              '[incidents]\nenabled = false\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    daemons = [subprocess.Popen([sys.executable, "-m", "monitor", "--log-level", "warning", "run",
                                 "--config", str(config)], env=env, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    try:
        time.sleep(RUN_SECONDS / 3)
        daemons[0].kill()  # SIGKILL mid-run: the others carry on
        time.sleep(RUN_SECONDS * 2 / 3)
        stopping = time.monotonic()
    finally:
        for daemon in daemons[1:]:
            daemon.send_signal(signal.SIGTERM)
        outputs = [d.communicate(timeout=60)[1] for d in daemons]
    assert [d.returncode for d in daemons[1:]] == [0, 0], outputs

    # Polls: never twice within an interval, and never a longer silence than a dead replica's
    # lease allows, from the first poll, across the kill, to the end.
    polls: dict[str, list[float]] = defaultdict(list)
    for request in http_server.requests:
        polls[request.path.strip("/")].append(request.received)
    for source in SOURCES:
        times = sorted(polls[source])
        gaps = [b - a for a, b in zip(times, [*times[1:], stopping])]
        assert len(times) >= 3 and min(gaps[:-1]) >= INTERVAL * 0.5, (source, gaps)
        assert max(gaps) <= LONGEST_GAP, (source, gaps)

    # Messages: every stored alert delivered, none twice (a SIGKILL between SMTP accepting and
    # the row being marked sent is the one documented way to send twice).
    engine = make_engine(load_config(config).store.url)
    with Session(engine) as session:
        rows = session.exec(select(OutboxMessage)).all()
    received = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert rows and all(r.status == "sent" for r in rows)
    assert set(received) == {r.message_id for r in rows}
    duplicates = {mid: n for mid, n in received.items() if n > 1}
    assert sum(n - 1 for n in duplicates.values()) <= 1, duplicates
