"""APScheduler wiring: one job per source, one outbox job, clean shutdown on signals."""
from __future__ import annotations

import logging
import random
import signal
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from monitor.health import HealthServer
from monitor.pipeline import PollResult, Runner

log = logging.getLogger(__name__)

OUTBOX_JOB = "outbox"
PURGE_JOB = "purge"
ESCALATION_JOB = "escalation"
FORGET_JOB = "forget-erased"
# How soon text erased by `schoolwatch privacy erase` (another process) leaves the daemon's memory.
FORGET_EVERY_MINUTES = 10
WORKERS = 4


def build_scheduler(runner: Runner) -> BackgroundScheduler:
    """A scheduler with a poll job per enabled source and the outbox job."""
    settings = runner.settings
    scheduler = BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(WORKERS)},
        # One poll of a source at a time; missed runs collapse into one.
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 300},
    )
    now = datetime.now(UTC)
    for source in settings.sources:
        if not source.enabled:
            log.info("source %s is disabled in the config", source.id)
            continue
        # Spread first polls so sources that share a host do not start together.
        first = now + timedelta(seconds=random.uniform(0, min(settings.scheduler.jitter, 10)))
        scheduler.add_job(
            _poll_job, IntervalTrigger(seconds=source.interval, jitter=settings.scheduler.jitter),
            args=[runner, scheduler, source.id], id=f"source:{source.id}",
            name=f"poll {source.id}", next_run_time=first,
        )
    scheduler.add_job(
        runner.deliver_outbox, IntervalTrigger(seconds=settings.scheduler.outbox_interval),
        id=OUTBOX_JOB, name="deliver outbox", next_run_time=now,
    )
    scheduler.add_job(runner.escalate, IntervalTrigger(minutes=1), id=ESCALATION_JOB,
                      name="escalate unacknowledged safeguarding incidents")
    scheduler.add_job(runner.forget_erased_stories, IntervalTrigger(minutes=FORGET_EVERY_MINUTES),
                      id=FORGET_JOB, name="forget erased or purged mentions in the story index")
    digest_times = {(r.cadence, r.at, r.day) for r in settings.routes if r.cadence != "immediate"}
    for cadence, at, day in sorted(digest_times):
        hour, minute = (int(part) for part in at.split(":"))
        weekday = day[:3] if cadence == "weekly" else "*"
        scheduler.add_job(
            runner.send_digests, CronTrigger(day_of_week=weekday, hour=hour, minute=minute,
                                             timezone=settings.timezone),
            args=[cadence, at], id=f"digest:{cadence}:{at}:{weekday}", name=f"{cadence} digest")
    hour, minute = (int(part) for part in settings.retention.purge_at.split(":"))
    scheduler.add_job(
        runner.purge, CronTrigger(hour=hour, minute=minute, timezone=settings.timezone),
        id=PURGE_JOB, name="retention purge",
    )
    return scheduler


def _poll_job(runner: Runner, scheduler: BackgroundScheduler, source_id: str) -> PollResult:
    result = runner.poll(source_id)
    if result.queued:
        # Alerts go out now, not at the next outbox tick: a DSL must hear at once.
        _run_soon(scheduler, OUTBOX_JOB, datetime.now(UTC))
    if result.retry_at is not None:
        _run_soon(scheduler, f"source:{source_id}", result.retry_at)
    return result


def _run_soon(scheduler: BackgroundScheduler, job_id: str, when: datetime) -> None:
    try:
        scheduler.modify_job(job_id, next_run_time=when)
    except JobLookupError:
        pass


def run_forever(runner: Runner) -> int:
    """Run until SIGTERM or SIGINT, then let running jobs finish and exit 0."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; shutting down after running jobs finish",
                 signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    runner.release_stale_leases()
    scheduler = build_scheduler(runner)
    health = None
    if runner.settings.health.address:
        host, port = runner.settings.health.address
        health = HealthServer(host, port, runner.engine, runner.settings, runner.metrics).start()
    scheduler.start()
    log.info("schoolwatch running: %d sources, outbox every %ds",
             sum(s.enabled for s in runner.settings.sources),
             runner.settings.scheduler.outbox_interval)
    try:
        stop.wait()
    finally:
        if health is not None:
            health.stop()
        scheduler.shutdown(wait=True)
        runner.deliver_outbox()
        runner.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("schoolwatch stopped")
    return 0
