"""Crash harness: the daemon against real local feed and SMTP servers, SIGKILLed again and again.

Used by tests/reliability/test_crash.py (a few dozen kills) and scripts/soak.py (hundreds).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

from tests.support.configs import write_config
from tests.support.database import backend, database_url, rows
from tests.support.http_server import RecordedServer, Reply, Request
from tests.support.smtp_server import Mailbox, SmtpServer

ROOT = Path(__file__).resolve().parents[2]
ZYGOTE = Path(__file__).resolve().parent / "zygote.py"
PASSWORD_ENV = "SW_CRASH_SMTP_PASSWORD"
DSL = frozenset({"dsl@harrowgate.example.sch.uk", "deputy.dsl@harrowgate.example.sch.uk"})
HEAD = frozenset({"head@harrowgate.example.sch.uk"})
SOURCES = 3

# What each kind of post says; every one is checked against the rules classifier up front.
TEMPLATES = {
    "violence": ("safeguarding", "Pupil at Harrowgate High School says he is bringing a knife in "
                                 "tomorrow, report {n}."),
    "self_harm": ("safeguarding", "i cant do this anymore, everyone at Harrowgate High School "
                                  "hates me, post {n}."),
    "abuse": ("disparaging", "The headteacher at Harrowgate High School is a useless liar, "
                             "thread {n}."),
    "complaint": ("reputational", "Harrowgate High School took our money for trip {n} and still "
                                  "no refund after six weeks."),
    "praise": ("none", "Harrowgate High School choir sang beautifully at concert {n}."),
    "elsewhere": ("unrelated", "Roadworks on Harrowgate High Street again in week {n}."),
}
KINDS = list(TEMPLATES)
# Made-up words make stories differ in more than a number: near-duplicate clustering must not
# merge two of them (30 words keep every pair well under its confirm ratio).
FILLER_WORDS = 30


@dataclass(frozen=True)
class Item:
    """One post in one feed."""

    guid: str
    link: str
    text: str
    kind: str
    story: str  # reposts share their original's story

    @property
    def category(self) -> str:
        """safeguarding, disparaging, reputational, none (about the school) or unrelated."""
        return TEMPLATES[self.kind][0]

    @property
    def about_school(self) -> bool:
        """True when relevance keeps it as a mention."""
        return self.category != "unrelated"

    @property
    def flagged(self) -> bool:
        """True when it should open (or join) an incident."""
        return self.category in ("safeguarding", "disparaging", "reputational")


def _story_text(kind: str, n: int) -> str:
    """The template, then made-up words unique to ``n``."""
    rng = random.Random(n)
    words = " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(5, 8)))
                     for _ in range(FILLER_WORDS))
    return f"{TEMPLATES[kind][1].format(n=n)} Seen near {words}."


def build_items(per_feed: int) -> list[list[Item]]:
    """Items for each feed, oldest first; the third feed reposts some of the first feed's stories."""
    feeds: list[list[Item]] = [[] for _ in range(SOURCES)]
    for f in range(SOURCES):
        for i in range(per_feed):
            n = f * 100_000 + i
            if f == 2 and i % 3 == 0 and i < len(feeds[0]):
                original = feeds[0][i]
                feeds[f].append(Item(guid=f"community-{i}", link=f"https://community.example.org/p/{i}",
                                     text=original.text, kind=original.kind, story=original.story))
                continue
            kind = KINDS[(i + f) % len(KINDS)]
            feeds[f].append(Item(guid=f"feed{f}-item-{i}", link=f"https://feed{f}.example.org/{i}",
                                 text=_story_text(kind, n), kind=kind, story=f"story-{n}"))
    return feeds


def check_items(feeds: list[list[Item]]) -> None:
    """Fail early, and clearly, if the rules classifier no longer sees the posts as the harness does."""
    from classifiers.base import ClassifierInput
    from classifiers.rules import RulesClassifier

    items = [it for feed in feeds for it in feed if it.about_school]
    verdicts = RulesClassifier().classify([ClassifierInput(text=it.text) for it in items])
    wrong = [(it.guid, it.category, v.category.value)
             for it, v in zip(items, verdicts, strict=True) if v.category.value != it.category]
    assert not wrong, f"rules classifier verdicts differ from the harness's: {wrong[:5]}"


def render_feed(index: int, items: list[Item]) -> bytes:
    """RSS 2.0 for feeds 0 and 2, Atom for feed 1; newest first, as real feeds are."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    newest_first = list(reversed(items))
    if index == 1:
        entries = "".join(
            f"<entry><id>{escape(it.guid)}</id><title>Post {escape(it.guid)}</title>"
            f'<link href="{escape(it.link)}"/><updated>{(start + timedelta(minutes=n)).isoformat()}'
            f"</updated><content type=\"text\">{escape(it.text)}</content></entry>"
            for n, it in zip(range(len(items), 0, -1), newest_first))
        return (f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
                f"<title>Alerts {index}</title><id>urn:feed:{index}</id>"
                f"<updated>{start.isoformat()}</updated>{entries}</feed>").encode()
    rows = "".join(
        f"<item><guid isPermaLink=\"false\">{escape(it.guid)}</guid><link>{escape(it.link)}</link>"
        f"<pubDate>{format_datetime(start + timedelta(minutes=n))}</pubDate>"
        f"<description>{escape(it.text)}</description></item>"
        for n, it in zip(range(len(items), 0, -1), newest_first))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Feed {index}</title><link>https://feed{index}.example.org/</link>"
            f"{rows}</channel></rss>").encode()


class CrashWorld:
    """Feeds that grow cycle by cycle, a real SMTP server, a config and its SQLite file."""

    def __init__(self, directory: Path, cycles: int, per_cycle: int = 2,
                 mailbox: Mailbox | None = None, window: int | None = None) -> None:
        self.directory = directory
        self.per_cycle = per_cycle
        # Serve only the newest ``window`` items, as real feeds do, so polls cost the same at
        # kill 300 as at kill 3; None serves everything published.
        self.window = window
        self.cycle = 0
        self.feeds = build_items(per_cycle * (cycles + 1))
        check_items(self.feeds)
        self.http = RecordedServer().start()
        self.smtp = SmtpServer()
        if mailbox is not None:
            self.smtp.mailbox = mailbox
        self.smtp.start()
        for index in range(SOURCES):
            self.http.route(f"/feed-{index}.xml", self._handler(index))
        sources = [{"id": f"feed-{i}", "school": "harrowgate", "connector": "rss",
                    "interval": "60s", "options": {"url": f"{self.http.url}/feed-{i}.xml",
                                                   "timeout": 10}}
                   for i in range(SOURCES)]
        smtp = {"host": "127.0.0.1", "port": self.smtp.port, "security": "starttls",
                "username": self.smtp.username, "password": {"env": PASSWORD_ENV},
                "ca_file": self.smtp.ca_file(directory), "timeout": 10}
        self.config = write_config(directory, sources, smtp=smtp,
                                   extra='[scheduler]\njitter = 0\noutbox_interval = "5s"\n')
        self.db = directory / "schoolwatch.db"
        self.logs = directory / "logs"
        self.logs.mkdir(exist_ok=True)

    def _handler(self, index: int) -> Callable[[Request], Reply]:
        def serve(_request: Request) -> Reply:
            count = self.visible(index)
            start = max(0, count - self.window) if self.window else 0
            return Reply(body=render_feed(index, self.feeds[index][start:count]),
                         etag=f'"feed-{index}-{count}"', content_type="application/rss+xml")
        return serve

    def visible(self, index: int) -> int:
        """How many of the feed's items are published at the current cycle."""
        return min(len(self.feeds[index]), self.per_cycle * (self.cycle + 1))

    def publish_all(self) -> None:
        """Every item of every feed from now on."""
        self.cycle = max(len(f) for f in self.feeds)

    def published(self) -> list[Item]:
        """Every item published so far (reposts included)."""
        return [it for i, feed in enumerate(self.feeds) for it in feed[:self.visible(i)]]

    def env(self) -> dict[str, str]:
        """The daemon's environment: the SMTP password, info logging."""
        return {**os.environ, PASSWORD_ENV: self.smtp.password, "SCHOOLWATCH_LOG_LEVEL": "info",
                "PYTHONPATH": str(ROOT)}

    def close(self) -> None:
        """Stop both servers."""
        self.http.stop()
        self.smtp.stop()


# --- launching and killing the daemon ---------------------------------------------------


class ExecLauncher:
    """Each daemon is ``python -m monitor run --config FILE``, started from scratch."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, config: Path, log: Path) -> int:
        """Start a daemon; its stderr goes to ``log``."""
        with open(log, "ab") as err:
            proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    env=self.env, cwd=self.cwd)
        self.procs[proc.pid] = proc
        return proc.pid

    def signal(self, pid: int, sig: int, timeout: float = 30) -> int:
        """Send ``sig`` and wait (bounded) for the exit code; SIGKILL if it does not exit."""
        proc = self.procs.pop(pid)
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def close(self) -> None:
        """Kill anything still running."""
        for pid in list(self.procs):
            self.signal(pid, signal.SIGKILL)


class ForkLauncher:
    """Each daemon is forked from a process that has already imported it (see zygote.py)."""

    def __init__(self, env: dict[str, str], cwd: Path, timeout: float = 120) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=cwd)
        self._buffer = b""
        self.live: set[int] = set()
        self._expect("ready", timeout)

    def _line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError("the fork server did not answer")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the fork server exited ({self.proc.poll()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _expect(self, word: str, timeout: float) -> list[str]:
        words = self._line(timeout).split()
        if not words or words[0] != word:
            raise RuntimeError(f"fork server said {words!r}, expected {word}")
        return words[1:]

    def _send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def start(self, config: Path, log: Path) -> int:
        """Fork a daemon; its stderr goes to ``log``."""
        self._send(f"spawn {config} {log}")
        pid = int(self._expect("pid", 30)[0])
        self.live.add(pid)
        return pid

    def signal(self, pid: int, sig: int, timeout: float = 30) -> int:
        """Send ``sig`` and wait (bounded) for the exit code; SIGKILL if it does not exit."""
        os.kill(pid, sig)  # the child is unreaped until "reap", so the pid cannot be reused
        self._send(f"reap {pid}")
        try:
            words = self._expect("status", timeout)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            words = self._expect("status", 10)
        self.live.discard(pid)
        return int(words[1])

    def close(self) -> None:
        """Kill live daemons, then the fork server."""
        for pid in list(self.live):
            try:
                self.signal(pid, signal.SIGKILL, timeout=10)
            except (OSError, RuntimeError, TimeoutError):
                pass
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def launched(world: CrashWorld, kind: type[ExecLauncher | ForkLauncher] = ForkLauncher
             ) -> Iterator[ExecLauncher | ForkLauncher]:
    """A launcher for ``world``; the daemons, the launcher and the servers are stopped afterwards."""
    launcher = None
    try:
        launcher = kind(world.env(), world.directory)
        yield launcher
    finally:
        if launcher is not None:
            launcher.close()
        world.close()


# --- the kill loop ----------------------------------------------------------------------


@dataclass
class Cycle:
    """What one daemon lifetime did before it was killed."""

    number: int
    delay: float
    exit_code: int
    phase: str  # startup, polling, sending, idle (see _phase)
    mentions_after: int
    # Message-IDs still pending in the store after the kill, and those the relay got this cycle.
    pending_after: set[str]
    received: list[str] = field(default_factory=list)

    @property
    def unmarked(self) -> set[str]:
        """Accepted by the relay but not marked sent: the at-least-once window."""
        return self.pending_after & set(self.received)


@dataclass
class CrashRun:
    """Everything a run of the harness observed."""

    cycles: list[Cycle] = field(default_factory=list)
    final_exit_code: int | None = None
    mark: int = 0  # messages the relay had when the current cycle started
    stuck_leases: int = 0
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        """SIGKILLs that landed (the daemon died of the signal)."""
        return sum(c.exit_code == -signal.SIGKILL for c in self.cycles)

    def phases(self) -> Counter:
        """How many kills landed in each phase of the daemon's life."""
        return Counter(c.phase for c in self.cycles)


def _count(db: Path, sql: str) -> int:
    """One number from the store (SQLite file or PostgreSQL), read on a connection of its own."""
    found = rows(database_url(db.parent), sql)
    return found[0][0] if found else 0


def pending_ids(db: Path) -> set[str]:
    """Message-IDs of outbox rows not yet marked sent."""
    return {r[0] for r in rows(database_url(db.parent),
                               "SELECT message_id FROM outbox WHERE status = 'pending'")}


def close_cycle(world: CrashWorld, run: CrashRun) -> None:
    """Give the last cycle the mail the relay took since it started (stragglers included)."""
    if run.cycles:
        run.cycles[-1].received = [m.message["Message-ID"] for m in world.smtp.messages[run.mark:]]
    run.mark = len(world.smtp.messages)


def _phase(log: Path) -> str:
    """Where the daemon was when it died, from its log: startup, polling, sending or idle."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if "schoolwatch running" not in text:
        return "startup"
    polls = sum(" fetched, " in line for line in text.splitlines())
    return "polling" if polls < SOURCES else "after-polls"


def kill_cycles(world: CrashWorld, launcher: ExecLauncher | ForkLauncher, cycles: int,
                rng: random.Random, delay: tuple[float, float], deadline: float,
                wait_for_start: bool = False, run: CrashRun | None = None) -> CrashRun:
    """Start the daemon and SIGKILL it after a random delay, ``cycles`` times (bounded by ``deadline``)."""
    run = run or CrashRun()
    for number in range(len(run.cycles), len(run.cycles) + cycles):
        if time.monotonic() > deadline:
            break
        world.cycle = number
        log = world.logs / f"cycle-{number:04d}.log"
        close_cycle(world, run)
        pid = launcher.start(world.config, log)
        if wait_for_start:
            # A fresh interpreter spends seconds importing; kill it once it is doing the work.
            wait_for(lambda: "schoolwatch running" in log.read_text(errors="replace")
                      if log.exists() else False, timeout=60)
        pause = rng.uniform(*delay)
        time.sleep(pause)
        code = launcher.signal(pid, signal.SIGKILL)
        phase = _phase(log)
        pending = pending_ids(world.db)
        if phase == "after-polls":
            phase = "sending" if pending else "idle"
        run.cycles.append(Cycle(number, pause, code, phase,
                                _count(world.db, "SELECT count(*) FROM mention"), pending))
    return run


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def settled(world: CrashWorld, since: datetime) -> bool:
    """Every published mention stored and every message sent, except leases killed daemons hold."""
    expected = sum(it.about_school for it in world.published())
    if _count(world.db, "SELECT count(*) FROM mention") < expected:
        return False
    # A lease taken before ``since`` belongs to a killed daemon; it holds its row until it expires.
    from monitor.outbox import LEASE

    cutoff = (since + LEASE).replace(tzinfo=None).isoformat(sep=" ")
    return _count(world.db, "SELECT count(*) FROM outbox WHERE status = 'pending' AND "
                            f"(leased_until IS NULL OR leased_until >= '{cutoff}')") == 0


def finish(world: CrashWorld, launcher: ExecLauncher | ForkLauncher, run: CrashRun,
           timeout: float = 90) -> CrashRun:
    """A last daemon with every item published, stopped with SIGTERM once settled; then expired leases."""
    world.publish_all()
    close_cycle(world, run)
    since = datetime.now(UTC)
    log = world.logs / "final.log"
    pid = launcher.start(world.config, log)
    try:
        wait_for(lambda: settled(world, since), timeout=timeout, step=0.2)
    finally:
        run.final_exit_code = launcher.signal(pid, signal.SIGTERM, timeout=60)
    run.stuck_leases = drain_expired_leases(world)
    return run


def drain_expired_leases(world: CrashWorld) -> int:
    """Deliver what killed daemons left leased, as the daemon does once LEASE has passed."""
    from monitor.config import load_config
    from monitor.outbox import LEASE
    from monitor.pipeline import Runner
    from monitor.store import utcnow

    previous = os.environ.get(PASSWORD_ENV)
    os.environ[PASSWORD_ENV] = world.smtp.password
    runner = Runner(load_config(world.config), clock=lambda: utcnow() + LEASE + timedelta(seconds=5))
    try:
        sent = 0
        for _ in range(20):
            report = runner.deliver_outbox()
            sent += report.sent
            if not report.sent and not report.failed:
                break
        return sent
    finally:
        runner.close()
        runner.engine.dispose()
        if previous is None:
            os.environ.pop(PASSWORD_ENV, None)
        else:
            os.environ[PASSWORD_ENV] = previous


# --- what must hold afterwards ----------------------------------------------------------


@dataclass
class Findings:
    """The checks' raw material, kept for the soak summary."""

    mentions: int = 0
    incidents: int = 0
    messages: int = 0
    received: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)


def verify(world: CrashWorld, run: CrashRun) -> Findings:
    """Assert the store and the mailbox are what the published feeds call for."""
    url = database_url(world.db.parent)
    # PostgreSQL checks foreign keys on every write and has no integrity_check to run.
    if backend() == "sqlite":
        assert [tuple(r) for r in rows(url, "PRAGMA integrity_check")] == [("ok",)]
        assert rows(url, "PRAGMA foreign_key_check") == []
    mentions = {r.external_id: r.incident_id
                for r in rows(url, "SELECT external_id, incident_id FROM mention")}
    seen = {r[0] for r in rows(url, "SELECT external_id FROM seen_key")}
    incidents = {r.id: r.category for r in rows(url, "SELECT id, category FROM incident")}
    outbox = [dict(r._mapping) for r in rows(
        url, "SELECT id, kind, incident_id, recipient, message_id, status FROM outbox")]
    cursors = {r[0]: r[1] for r in rows(url, "SELECT source_id, cursor FROM source_state")}
    items = world.published()
    about = {it.guid for it in items if it.about_school}
    # No cursor moved past data that was not stored: every published item is here.
    hint = (f" (with a {world.window}-item window an item is lost if no daemon lives long enough "
            "to poll while it is served: raise the delays or the window)") if world.window else ""
    missing = sorted({it.guid for it in items} - seen)
    assert not missing, f"never fetched: {missing[:5]}{hint}"
    assert seen == {it.guid for it in items}
    assert set(mentions) == about, f"missing mentions: {sorted(about - set(mentions))[:5]}"
    assert {k: json.loads(v or "{}").get("etag") for k, v in cursors.items()} == {
        f"feed-{i}": f'"feed-{i}-{world.visible(i)}"' for i in range(SOURCES)}, cursors
    # One incident per flagged story; reposts joined their original.
    stories: dict[str, set[int | None]] = {}
    for it in items:
        if it.flagged:
            stories.setdefault(it.story, set()).add(mentions[it.guid])
        elif it.about_school:
            assert mentions[it.guid] is None, f"{it.guid} is not flagged but joined an incident"
    assert all(len(ids) == 1 and None not in ids for ids in stories.values()), "a story split"
    story_incident = {story: next(iter(ids)) for story, ids in stories.items()}
    assert len(set(story_incident.values())) == len(story_incident) == len(incidents)
    category = {it.story: it.category for it in items}
    # Every message went, to the right people, once per (incident, recipient).
    assert {row["kind"] for row in outbox} <= {"alert"}, Counter(row["kind"] for row in outbox)
    assert all(row["status"] == "sent" for row in outbox), [r for r in outbox if r["status"] != "sent"]
    by_incident: dict[int, Counter] = {}
    for row in outbox:
        by_incident.setdefault(row["incident_id"], Counter())[row["recipient"]] += 1
    for story, incident in story_incident.items():
        want = DSL if category[story] == "safeguarding" else HEAD
        assert incidents[incident] == category[story], story
        assert by_incident.get(incident) == Counter(want), (story, by_incident.get(incident))
    received = Counter(m.message["Message-ID"] for m in world.smtp.messages)
    recipients = {m.message["Message-ID"]: m.recipients for m in world.smtp.messages}
    rows_by_mid = Counter(row["message_id"] for row in outbox)
    assert set(received) == set(rows_by_mid), "received mail the outbox never held, or missed some"
    assert set(rows_by_mid.values()) == {1}
    for row in outbox:
        assert recipients[row["message_id"]] == [row["recipient"]], row
    # At-least-once: a message goes twice only when a daemon died after the relay accepted it and
    # before the row was marked sent, and then once more for each such death.
    duplicates = {mid: n for mid, n in received.items() if n > 1}
    for mid, copies in duplicates.items():
        windows = sum(mid in c.unmarked for c in run.cycles if c.exit_code == -signal.SIGKILL)
        assert copies - 1 <= windows, f"{mid} arrived {copies} times; killed in the window {windows}"
    return Findings(mentions=len(mentions), incidents=len(incidents), messages=len(outbox),
                    received=sum(received.values()), duplicates=duplicates)


def error_lines(world: CrashWorld) -> list[str]:
    """ERROR lines and tracebacks in the daemons' logs."""
    lines = []
    for log in sorted(world.logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " in line or line.startswith("Traceback") or " CRITICAL " in line:
                lines.append(f"{log.name}: {line}")
    return lines
