"""Health for the admin's monitoring: a status summary, /healthz and Prometheus /metrics."""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from monitor.config import Settings
from monitor.store import Incident, OutboxMessage, SourceState, as_utc, utcnow

log = logging.getLogger(__name__)

# An outbox message waiting longer than this means delivery is broken, not just slow.
STUCK_OUTBOX = timedelta(hours=1)


class Metrics:
    """The daemon's counters, in a registry of its own (one per Runner)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter("schoolwatch_polls", "Source polls by outcome",
                             ["source", "status"], registry=self.registry)
        self.mentions = Counter("schoolwatch_mentions", "Mentions by stage",
                                ["source", "stage"], registry=self.registry)
        self.incidents = Counter("schoolwatch_incidents_opened", "Incidents opened",
                                 ["source"], registry=self.registry)
        self.messages = Counter("schoolwatch_messages", "Outbox deliveries by outcome",
                                ["outcome"], registry=self.registry)
        self.classify_seconds = Histogram(
            "schoolwatch_classify_seconds", "Classifier time per batch",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)

    def record_poll(self, result: Any) -> None:
        """Count one poll's outcome and what it found."""
        self.polls.labels(result.source_id, result.status).inc()
        for stage in ("fetched", "new", "relevant", "flagged"):
            self.mentions.labels(result.source_id, stage).inc(getattr(result, stage))
        self.incidents.labels(result.source_id).inc(result.incidents)

    def record_delivery(self, report: Any) -> None:
        """Count one outbox pass."""
        self.messages.labels("sent").inc(report.sent)
        self.messages.labels("failed").inc(report.failed)

    def watch_store(self, engine: Engine, settings: Settings) -> None:
        """Expose store-derived gauges (outbox depth, source health) at scrape time."""
        self.registry.register(_StoreCollector(engine, settings))

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)


class _StoreCollector:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        report = health_report(self.engine, self.settings)
        depth = GaugeMetricFamily("schoolwatch_outbox_pending", "Messages waiting to be sent")
        depth.add_metric([], report.outbox_pending)
        yield depth
        oldest = GaugeMetricFamily("schoolwatch_outbox_oldest_pending_seconds",
                                   "Age of the oldest undelivered message")
        oldest.add_metric([], report.oldest_pending_seconds or 0)
        yield oldest
        failing = GaugeMetricFamily("schoolwatch_source_consecutive_failures",
                                    "Failed polls in a row", labels=["source"])
        last_ok = GaugeMetricFamily("schoolwatch_source_last_success_timestamp_seconds",
                                    "Unix time of the last successful poll", labels=["source"])
        for source in report.sources:
            failing.add_metric([source.id], source.consecutive_failures)
            if source.last_success:
                last_ok.add_metric([source.id], datetime.fromisoformat(source.last_success).timestamp())
        yield failing
        yield last_ok
        open_incidents = GaugeMetricFamily("schoolwatch_incidents_open", "Open incidents",
                                           labels=["category"])
        for category, count in report.open_incidents.items():
            open_incidents.add_metric([category], count)
        yield open_incidents


@dataclass
class SourceHealth:
    """One source's health, for status output."""

    id: str
    state: str  # ok, failing, disabled, waiting, new, off
    consecutive_failures: int = 0
    last_success: str | None = None
    last_error: str | None = None


@dataclass
class HealthReport:
    """The daemon's health as the store shows it."""

    status: str  # ok, degraded, failing
    problems: list[str] = field(default_factory=list)
    sources: list[SourceHealth] = field(default_factory=list)
    outbox_pending: int = 0
    oldest_pending_seconds: float | None = None
    open_incidents: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as JSON."""
        return json.dumps(asdict(self), indent=2)


def health_report(engine: Engine, settings: Settings, now: datetime | None = None) -> HealthReport:
    """Read source health, outbox depth and open incidents from the store."""
    now = now or utcnow()
    report = HealthReport(status="ok")
    with Session(engine) as session:
        states = {s.source_id: s for s in session.exec(select(SourceState))}
        pending = session.exec(select(func.count(), func.min(OutboxMessage.created_at))
                               .where(OutboxMessage.status == "pending")).one()
        report.open_incidents = dict(session.exec(
            select(Incident.category, func.count()).where(Incident.status == "open")
            .group_by(Incident.category)).all())
    report.outbox_pending = pending[0]
    if pending[1] is not None:
        report.oldest_pending_seconds = (now - as_utc(pending[1])).total_seconds()
    for source in settings.sources:
        state = states.get(source.id)
        report.sources.append(_source_health(source, state))
    bad = [s for s in report.sources if s.state in ("failing", "disabled")]
    for source in bad:
        report.problems.append(f"source {source.id} is {source.state}: {source.last_error}")
    if report.oldest_pending_seconds and report.oldest_pending_seconds > STUCK_OUTBOX.total_seconds():
        report.problems.append(f"{report.outbox_pending} messages undelivered, the oldest for "
                               f"{report.oldest_pending_seconds / 60:.0f} minutes")
    enabled = [s for s in report.sources if s.state != "off"]
    if (enabled and len(bad) == len(enabled)) or (report.oldest_pending_seconds or 0) > \
            STUCK_OUTBOX.total_seconds():
        report.status = "failing"
    elif report.problems:
        report.status = "degraded"
    return report


def _source_health(source: Any, state: SourceState | None) -> SourceHealth:
    health = SourceHealth(id=source.id, state="off" if not source.enabled else "new")
    if state is None or not source.enabled:
        return health
    health.consecutive_failures = state.consecutive_failures
    health.last_success = as_utc(state.last_success_at).isoformat() if state.last_success_at else None
    health.last_error = state.last_error if state.consecutive_failures or state.disabled_reason else None
    if state.disabled_reason:
        health.state = "disabled"
    elif state.consecutive_failures:
        health.state = "failing"
    elif state.last_success_at:
        health.state = "ok"
    return health


class HealthServer:
    """A small HTTP server on a local address: /healthz (JSON) and /metrics (Prometheus)."""

    def __init__(self, host: str, port: int, engine: Engine, settings: Settings,
                 metrics: Metrics) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5}, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self._server.server_address[:2]

    def start(self) -> HealthServer:
        """Serve in a background thread."""
        self._thread.start()
        log.info("health endpoint on http://%s:%d/healthz and /metrics", *self.address)
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    if self.path.split("?")[0] == "/healthz":
                        report = health_report(owner.engine, owner.settings)
                        self._reply(503 if report.status == "failing" else 200,
                                    report.to_json().encode(), "application/json")
                    elif self.path.split("?")[0] == "/metrics":
                        self._reply(200, owner.metrics.exposition(), CONTENT_TYPE_LATEST)
                    else:
                        self._reply(404, b"not found\n", "text/plain")
                except Exception:
                    log.exception("health endpoint failed")
                    self._reply(500, b"error\n", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return _Handler
