"""The daemon SIGKILLed at random points, again and again: nothing lost, nothing sent twice
except the at-least-once case (killed after the relay accepted a message, before it was marked sent)."""
from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import threading
import time

import pytest

from monitor.config import load_config
from monitor.store import init_db, make_engine
from tests.reliability.harness import (
    CrashRun,
    CrashWorld,
    Cycle,
    ExecLauncher,
    ForkLauncher,
    PASSWORD_ENV,
    launched,
    close_cycle,
    pending_ids,
    wait_for,
    error_lines,
    finish,
    kill_cycles,
    verify,
)
from tests.support.database import sqlite_only
from tests.support.smtp_server import Mailbox

KILLS = 32
SEED = 20261121
ATTEMPTS = 12


def summary(run: CrashRun) -> str:
    """One line for the test log: kills by phase, duplicates window, leases left by the dead."""
    phases = ", ".join(f"{k} {v}" for k, v in sorted(run.phases().items()))
    in_window = sum(bool(c.unmarked) for c in run.cycles)
    return (f"{run.kills} kills ({phases}); {in_window} inside the accept-to-marked window; "
            f"{run.stuck_leases} messages waited for a dead daemon's lease")


def test_random_sigkills_lose_nothing_and_send_nothing_twice(tmp_path):
    world = CrashWorld(tmp_path, cycles=KILLS)
    with launched(world) as launcher:
        run = kill_cycles(world, launcher, KILLS, random.Random(SEED), delay=(0.05, 1.5),
                          deadline=time.monotonic() + 150)
        finish(world, launcher, run)
    print(summary(run))
    assert run.kills >= 30, summary(run)
    assert all(c.exit_code == -signal.SIGKILL for c in run.cycles), "the daemon died on its own"
    assert run.final_exit_code == 0, "the last daemon did not stop cleanly on SIGTERM"
    findings = verify(world, run)
    assert findings.incidents > KILLS  # the feeds grew every cycle: kills landed amid real work
    assert not error_lines(world)


def test_the_real_entry_point_survives_sigkill(tmp_path):
    """A few kills of ``python -m monitor run`` itself, so the fork server hides nothing."""
    world = CrashWorld(tmp_path, cycles=2, per_cycle=3)
    with launched(world, ExecLauncher) as launcher:
        run = kill_cycles(world, launcher, 2, random.Random(SEED), delay=(0.0, 0.6),
                          deadline=time.monotonic() + 90, wait_for_start=True)
        finish(world, launcher, run)
    assert run.kills == 2 and run.final_exit_code == 0
    verify(world, run)
    assert not error_lines(world)


class HoldingMailbox(Mailbox):
    """Holds the first message's reply at one SMTP step until the test has killed the sender."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step  # "RCPT": before the relay has the message; "DATA": after
        self.holding = threading.Event()
        self.release = threading.Event()
        self.held = False

    async def _hold(self) -> None:
        if self.held:
            return
        self.held = True
        self.holding.set()
        for _ in range(400):  # bounded: 20 s
            if self.release.is_set():
                return
            await asyncio.sleep(0.05)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.step == "RCPT":
            await self._hold()
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if self.step == "DATA":
            await self._hold()
        return reply


def kill_while_held(world: CrashWorld, launcher: ForkLauncher, mailbox: HoldingMailbox) -> CrashRun:
    """Start the daemon, SIGKILL it while the relay holds its first message, then let the relay go."""
    run = CrashRun()
    close_cycle(world, run)
    log = world.logs / "held.log"
    pid = launcher.start(world.config, log)
    try:
        assert mailbox.holding.wait(60), "the daemon never reached the relay"
    finally:
        code = launcher.signal(pid, signal.SIGKILL)
        mailbox.release.set()
    run.cycles.append(Cycle(0, 0.0, code, "sending", 0, pending_ids(world.db)))
    return run


def test_killed_after_the_relay_accepted_sends_the_same_message_again(tmp_path):
    mailbox = HoldingMailbox("DATA")
    world = CrashWorld(tmp_path, cycles=0, per_cycle=1, mailbox=mailbox)
    with launched(world) as launcher:
        run = kill_while_held(world, launcher, mailbox)
        held = world.smtp.messages[0].message["Message-ID"]
        finish(world, launcher, run)
    assert run.kills == 1
    findings = verify(world, run)
    # The documented at-least-once case: the same Message-ID twice, one outbox row, now sent.
    assert findings.duplicates == {held: 2}


def test_a_message_the_killed_daemon_never_delivered_goes_out_promptly_after_restart(tmp_path):
    mailbox = HoldingMailbox("RCPT")
    world = CrashWorld(tmp_path, cycles=0, per_cycle=1, mailbox=mailbox)
    with launched(world) as launcher:
        kill_while_held(world, launcher, mailbox)
        assert not world.smtp.messages  # the relay never had it
        pid = launcher.start(world.config, world.logs / "restart.log")
        try:
            # A safeguarding alert must not wait minutes because its first sender died.
            delivered = wait_for(lambda: len({m.message["Message-ID"] for m in world.smtp.messages})
                                 == 4, timeout=12, step=0.2)
        finally:
            launcher.signal(pid, signal.SIGTERM)
    assert delivered, "the message the dead daemon had leased was not sent after the restart"


def schema(db) -> set[tuple[str, str, str]]:
    """Every table, index and trigger in the SQLite file, with its SQL."""
    con = sqlite3.connect(db)
    try:
        return set(con.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master"))
    finally:
        con.close()


@sqlite_only("it deletes the store file between kills; on PostgreSQL the migration is one "
             "transaction (test_migrations kills one mid-way on both databases)")
def test_killed_during_the_first_start_the_next_start_completes_the_schema(tmp_path, monkeypatch):
    world = CrashWorld(tmp_path, cycles=0, per_cycle=1)
    monkeypatch.setenv(PASSWORD_ENV, world.smtp.password)
    url = load_config(world.config).store.url
    rng = random.Random(SEED)
    partial = 0
    with launched(world) as launcher:
        engine = make_engine(url)
        init_db(engine)
        engine.dispose()
        complete = schema(world.db)
        for attempt in range(ATTEMPTS):
            for path in tmp_path.glob("schoolwatch.db*"):
                path.unlink()
            pid = launcher.start(world.config, world.logs / f"first-start-{attempt}.log")
            # The schema is created within a tenth of a second of the file appearing: aim there.
            wait_for(world.db.exists, timeout=10, step=0.005)
            time.sleep(rng.uniform(0.0, 0.12))
            launcher.signal(pid, signal.SIGKILL)
            partial += world.db.exists() and schema(world.db) != complete
            engine = make_engine(url)
            try:
                init_db(engine)  # what the next start does first
            finally:
                engine.dispose()
            assert schema(world.db) == complete, f"attempt {attempt}"
    print(f"{partial} of {ATTEMPTS} kills left a partly created schema")
