"""One poll of one source: fetch, relevance, seen, classify, then store everything at once."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from alerts.base import Channel
from classifiers.base import Assessment, Category, Classifier, ClassifierInput
from connectors.base import (
    AuthFailed,
    Batch,
    Connector,
    ConnectorError,
    Mention,
    RateLimited,
    SchoolContext,
)
from monitor import registry
from monitor.clustering import StoryIndex, story_refs
from monitor.config import Settings, SourceSettings, validate_options
from monitor.coordination import claim, release
from monitor.dedupe import canonical_url, text_hash
from monitor.digests import queue_digests
from monitor.escalation import escalate_due
from monitor.evidence.page import capture_page
from monitor.evidence.record import capture_record
from monitor.feedback import Suppressions
from monitor.health import Metrics
from monitor.incidents import attach
from monitor.outbox import DeliveryReport, deliver_due, queue_admin_notice, queue_incident_alert
from monitor.relevance import SchoolMatcher
from monitor.retention import purge
from monitor.store import (
    AssessmentRow,
    MentionRow,
    OutboxMessage,
    SeenKey,
    SourceState,
    as_utc,
    audit,
    init_db,
    make_engine,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_FAILURE_BACKOFF = timedelta(hours=1)
SEEN_QUERY_CHUNK = 200


@dataclass
class PollResult:
    """What one poll of one source did."""

    source_id: str
    status: str  # ok, failed, rate_limited, auth_failed, disabled, waiting, budget_spent
    fetched: int = 0
    new: int = 0
    relevant: int = 0
    flagged: int = 0
    incidents: int = 0
    queued: int = 0
    error: str | None = None
    retry_at: datetime | None = None
    flagged_subjects: list[str] = field(default_factory=list)
    # Mentions whose evidence record was stored, for the optional page capture after commit.
    evidence_mentions: list[int] = field(default_factory=list)


class Runner:
    """Holds the loaded plugins and runs polls and outbox passes against the store."""

    def __init__(self, settings: Settings, engine: Engine | None = None,
                 classifier: Classifier | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.store.url)
        init_db(self.engine)
        self.clock = clock
        self._story_index: StoryIndex | None = None
        self._classifier = classifier
        self._connectors: dict[str, Connector] = {}
        self._channels: dict[str, Channel] = {}
        self._lock = threading.Lock()
        # Its own lock: a rebuild takes seconds, and must not hold up loading a connector.
        self._story_lock = threading.Lock()
        self.matchers = {
            s.id: SchoolMatcher.build(s.name, s.aliases, s.handles, s.exclusions)
            for s in settings.schools
        }
        self.metrics = Metrics()
        self.metrics.watch_store(self.engine, settings)

    @property
    def classifier(self) -> Classifier:
        """The configured classifier, loaded once on first use."""
        with self._lock:
            if self._classifier is None:
                cfg = self.settings.classifier
                plugin = registry.load(registry.CLASSIFIERS, cfg.name)
                options = validate_options(plugin.Config, cfg.options, "classifier.options",
                                           self.settings.base_dir)
                self._classifier = plugin(options)
            return self._classifier

    @property
    def story_index(self) -> StoryIndex | None:
        """The near-duplicate index of recent stories, rebuilt from the store on first use."""
        if not self.settings.incidents.enabled:
            return None
        with self._story_lock:
            if self._story_index is None:
                # Built lazily: commands that never store a mention should not pay for it.
                self._story_index = StoryIndex.rebuild(
                    self.engine, self.settings.incidents, clock=self.clock,
                    school_names={s.id: [s.name, *s.aliases, *s.handles]
                                  for s in self.settings.schools},
                )
            return self._story_index

    def connector(self, source: SourceSettings) -> Connector:
        """The source's connector, built once."""
        with self._lock:
            if source.id not in self._connectors:
                plugin = registry.load(registry.CONNECTORS, source.connector)
                index = self.settings.sources.index(source)
                options = validate_options(plugin.Config, source.options,
                                           f"sources[{index}].options", self.settings.base_dir)
                school = self.settings.school(source.school)
                context = SchoolContext(id=school.id, name=school.name,
                                        aliases=tuple(school.aliases),
                                        handles=tuple(school.handles),
                                        exclusions=tuple(school.exclusions))
                self._connectors[source.id] = plugin(options, context, source.id)
            return self._connectors[source.id]

    def channel(self, name: str) -> Channel:
        """A channel by outbox name: smtp, file, or apprise:<name> for [channels.<name>]."""
        with self._lock:
            if name not in self._channels:
                email = self.settings.email
                if name.startswith("apprise:"):
                    plugin = registry.load(registry.CHANNELS, "apprise")
                    urls = self.settings.channels[name.split(":", 1)[1]].urls
                    config = plugin.Config(urls=urls)
                else:
                    plugin = registry.load(registry.CHANNELS, name)
                    options = (email.smtp or {}) if name == "smtp" else (
                        {"directory": email.outbox_dir} if name == "file" else {})
                    config = validate_options(plugin.Config, options, f"email.{name}")
                self._channels[name] = plugin(config)
            return self._channels[name]

    # --- polling -------------------------------------------------------------------

    def poll(self, source_id: str, force: bool = False) -> PollResult:
        """Poll one source; never raises, so one broken source cannot stop the others.

        With replicas, only the daemon holding the source's lease polls, and not again
        within the interval; ``force`` (run --once) skips the interval check only.
        """
        source = self.settings.source(source_id)
        scheduler = self.settings.scheduler
        if scheduler.replicas:
            gap = timedelta(seconds=0 if force else max(source.interval - scheduler.jitter,
                                                         source.interval // 2))
            try:
                mine = claim(self.engine, source_id, self.clock(),
                             timedelta(seconds=scheduler.lease), gap)
            except Exception as exc:  # a database outage must not kill the scheduler thread
                log.error("source %s: cannot take its lease: %s", source_id, exc)
                return PollResult(source_id, "failed", error=f"lease: {type(exc).__name__}")
            if not mine:
                return PollResult(source_id, "elsewhere")
        try:
            result = self._poll(source)
        except Exception as exc:  # the last line of defence for a scheduler thread
            log.debug("source %s: unexpected error", source_id, exc_info=True)
            result = self._record_failure(source, f"unexpected {describe_error(exc)}")
        finally:
            if scheduler.replicas:
                release(self.engine, source_id)
        self.metrics.record_poll(result)
        return result

    def _poll(self, source: SourceSettings) -> PollResult:
        now = self.clock()
        state = self._state(source.id)
        config_hash = _config_hash(source)
        if state.disabled_reason and state.disabled_config_hash == config_hash:
            return PollResult(source.id, "disabled", error=state.disabled_reason)
        if state.not_before and as_utc(state.not_before) > now:
            return PollResult(source.id, "waiting", retry_at=as_utc(state.not_before))
        connector = self.connector(source)
        budget = connector.daily_budget()
        if budget is not None:
            spent = state.budget_spent if state.budget_day == now.date().isoformat() else 0
            connector.remaining_budget = max(0, budget - spent)
        try:
            batch = connector.fetch(state.cursor)
        except RateLimited as exc:
            return self._record_rate_limit(source, str(exc), exc.retry_at)
        except AuthFailed as exc:
            return self._record_auth_failure(source, str(exc), config_hash)
        except ConnectorError as exc:
            return self._record_failure(source, str(exc))
        try:
            return self.process(source, batch)
        except Exception as exc:
            # The traceback only at DEBUG: a database error's text can quote the post.
            log.debug("source %s: processing failed", source.id, exc_info=True)
            return self._record_failure(source, f"processing failed, cursor not advanced: "
                                                f"{describe_error(exc)}")

    def process(self, source: SourceSettings, batch: Batch) -> PollResult:
        """Store a fetched batch: mentions, verdicts, incidents, alerts and cursor, atomically."""
        result = PollResult(source.id, "ok", fetched=len(batch.mentions))
        fresh = self._unseen(_unique(batch.mentions))
        result.new = len(fresh)
        matcher = self.matchers[source.school]
        relevant = [m for m in fresh if not source.require_mention or matcher.matches(m.title, m.text)]
        result.relevant = len(relevant)
        assessments = self._classify_unless_suppressed(source, relevant)
        relevant_ids = {id(m) for m in relevant}
        # Rebuild before the write transaction opens, so the rebuild never holds the lock.
        story_index = self.story_index if relevant else None
        with Session(self.engine) as session:
            for mention in fresh:
                session.add(SeenKey(platform=mention.platform, external_id=mention.external_id,
                                    source_id=source.id, relevant=id(mention) in relevant_ids))
            # Oldest first, so a repost is processed after the post it repeats.
            for mention, assessment in sorted(zip(relevant, assessments, strict=True),
                                              key=lambda pair: pair[0].published_at):
                self._store_mention(session, source, mention, assessment, story_index, result)
            state = session.get(SourceState, source.id) or SourceState(source_id=source.id)
            self._advance(state, batch)
            session.add(state)
            session.commit()
        evidence = self.settings.evidence
        if evidence.snapshot_html or evidence.screenshot:
            for mention_id in result.evidence_mentions:
                capture_page(self.engine, mention_id, evidence)
        if result.flagged or result.new:
            log.info("source %s: %d fetched, %d new, %d about the school, %d flagged, "
                     "%d new incidents, %d messages queued", source.id, result.fetched,
                     result.new, result.relevant, result.flagged, result.incidents, result.queued)
        return result

    def _store_mention(self, session: Session, source: SourceSettings, mention: Mention,
                       assessment: Assessment, story_index: StoryIndex | None,
                       result: PollResult) -> None:
        row = MentionRow(
            platform=mention.platform, external_id=mention.external_id, source_id=source.id,
            school_id=source.school, url=mention.url, canonical_url=canonical_url(mention.url),
            author=mention.author, title=mention.title, text=mention.text,
            text_hash=text_hash(mention.text), published_at=mention.published_at,
            fetched_at=mention.fetched_at,
            # Only flagged mentions keep the platform payload: it is evidence, the rest is not needed.
            raw=mention.raw if assessment.flagged else None,
        )
        session.add(row)
        session.flush()
        verdict = AssessmentRow(
            mention_id=row.id, classifier=assessment.classifier or self.settings.classifier.name,
            category=assessment.category.value,
            severity=assessment.severity.value if assessment.severity else None,
            subtype=assessment.subtype.value if assessment.subtype else None,
            scores=assessment.scores, reasons=assessment.reasons,
        )
        session.add(verdict)
        if assessment.flagged:
            result.flagged += 1
        change = attach(session, row, assessment, story_index,
                        refs=story_refs(mention.platform, mention.raw), now=self.clock())
        if assessment.flagged or row.incident_id is not None:
            # The evidence record is hashed now, in the same transaction as the mention.
            capture_record(session, row, verdict, captured_at=self.clock())
            result.evidence_mentions.append(row.id)
        if change is None:
            return
        now = self.clock()
        if change.created:
            result.incidents += 1
            result.queued += queue_incident_alert(session, self.settings, change.incident, row,
                                                  assessment.reasons, now=now)
            result.flagged_subjects.append(f"#{change.incident.id} {change.incident.category}")
        elif change.update_reason:
            result.queued += queue_incident_alert(
                session, self.settings, change.incident, row, assessment.reasons, kind="update",
                update_reason=change.update_reason, now=now)
        elif change.incident.mention_count in self.settings.alerting.volume_steps \
                and change.incident.status in ("open", "acknowledged"):
            result.queued += queue_incident_alert(
                session, self.settings, change.incident, row, assessment.reasons, kind="update",
                update_reason=f"this story is spreading: {change.incident.mention_count} mentions "
                              f"on {', '.join(change.incident.platforms)}", now=now)

    def _classify_unless_suppressed(self, source: SourceSettings,
                                    mentions: Sequence[Mention]) -> list[Assessment]:
        """Verdicts in order; mentions a school's suppression rule covers are not classified."""
        if not mentions:
            return []
        with Session(self.engine) as session:
            suppressions = Suppressions.load(session, source.school)
        verdicts: dict[int, Assessment] = {}
        to_classify = []
        for index, mention in enumerate(mentions):
            rule = suppressions.match(mention.author, f"{mention.title or ''}\n{mention.text}")
            if rule is None:
                to_classify.append(index)
            else:
                verdicts[index] = Assessment(
                    category=Category.NONE, classifier="suppression",
                    reasons=[f"suppressed by rule #{rule.id} ({rule.kind} '{rule.value}', "
                             f"added by {rule.created_by})"])
        classified = self._classify(source, [mentions[i] for i in to_classify])
        verdicts.update(zip(to_classify, classified, strict=True))
        return [verdicts[i] for i in range(len(mentions))]

    def _classify(self, source: SourceSettings, mentions: Sequence[Mention]) -> list[Assessment]:
        if not mentions:
            return []
        inputs = [ClassifierInput(text=m.text, title=m.title, platform=m.platform) for m in mentions]
        classifier = self.classifier
        with self.metrics.classify_seconds.time():
            assessments = classifier.classify(inputs)
        if len(assessments) != len(inputs):
            raise RuntimeError(f"classifier returned {len(assessments)} verdicts for {len(inputs)}")
        if source.categories is not None:
            assessments = [a.restricted_to(source.categories) for a in assessments]
        return assessments

    def _unseen(self, mentions: list[Mention]) -> list[Mention]:
        ids_by_platform: dict[str, list[str]] = {}
        for mention in mentions:
            ids_by_platform.setdefault(mention.platform, []).append(mention.external_id)
        seen: set[tuple[str, str]] = set()
        with Session(self.engine) as session:
            # "platform = ? AND id IN (...)" walks the unique index; SQLite answers the
            # row-value form "(platform, id) IN (VALUES ...)" by reading every key ever seen.
            for platform, ids in ids_by_platform.items():
                for start in range(0, len(ids), SEEN_QUERY_CHUNK):
                    seen.update(session.exec(
                        select(SeenKey.platform, SeenKey.external_id)
                        .where(SeenKey.platform == platform,
                               col(SeenKey.external_id).in_(ids[start:start + SEEN_QUERY_CHUNK]))
                    ).all())
        return [m for m in mentions if (m.platform, m.external_id) not in seen]

    def _advance(self, state: SourceState, batch: Batch) -> None:
        now = self.clock()
        today = now.date().isoformat()
        if state.budget_day != today:
            state.budget_day, state.budget_spent = today, 0
        state.budget_spent += batch.cost
        if batch.next_cursor is not None:
            state.cursor = batch.next_cursor
        state.last_poll_at = state.last_success_at = now
        recovered = state.consecutive_failures
        state.consecutive_failures = 0
        state.not_before = None
        state.disabled_reason = state.disabled_config_hash = None
        if recovered and state.failure_notified:
            log.info("source %s recovered after %d failed polls", state.source_id, recovered)
        state.failure_notified = False

    # --- health --------------------------------------------------------------------

    def _state(self, source_id: str) -> SourceState:
        with Session(self.engine) as session:
            state = session.get(SourceState, source_id) or SourceState(source_id=source_id)
            session.expunge_all()
            return state

    def _record_failure(self, source: SourceSettings, error: str) -> PollResult:
        now = self.clock()
        failures, backoff, unrecorded = 0, timedelta(0), ""
        try:
            with Session(self.engine) as session:
                state = session.get(SourceState, source.id) or SourceState(source_id=source.id)
                state.consecutive_failures += 1
                state.last_poll_at = state.last_error_at = now
                state.last_error = error[:2000]
                # Back off on repeated failures, up to an hour beyond the normal interval.
                backoff = min(timedelta(seconds=60 * 2 ** (state.consecutive_failures - 1)),
                              MAX_FAILURE_BACKOFF)
                state.not_before = now + backoff if state.consecutive_failures > 1 else None
                failures = state.consecutive_failures
                threshold = self.settings.scheduler.failures_before_alert
                if failures >= threshold and not state.failure_notified:
                    state.failure_notified = True
                    queue_admin_notice(
                        session, self.settings, f"failing:{source.id}:{now:%Y%m%d%H%M%S}",
                        f"source {source.id} is failing",
                        [f"Source {source.id} ({source.connector}) has failed {failures} polls "
                         f"in a row.", f"Last error: {error}",
                         "Mentions from this source are not being checked until it recovers. "
                         "Run: schoolwatch sources test " + source.id], now=now)
                session.add(state)
                session.commit()
        except Exception as exc:  # the store itself is failing: say so in the same line
            unrecorded = f" (health not recorded: {describe_error(exc)})"
        log.warning("source %s failed (%s in a row): %s%s", source.id, failures or "?", error,
                    unrecorded)
        return PollResult(source.id, "failed", error=error,
                          retry_at=now + backoff if failures > 1 else None)

    def _record_rate_limit(self, source: SourceSettings, error: str,
                           retry_at: datetime | None) -> PollResult:
        now = self.clock()
        retry_at = retry_at or now + timedelta(seconds=source.interval)
        with Session(self.engine) as session:
            state = session.get(SourceState, source.id) or SourceState(source_id=source.id)
            state.last_poll_at = state.last_error_at = now
            state.last_error = error[:2000]
            state.not_before = retry_at
            session.add(state)
            session.commit()
        log.warning("source %s rate limited; next poll at %s UTC", source.id,
                    f"{retry_at:%Y-%m-%d %H:%M:%S}")
        return PollResult(source.id, "rate_limited", error=error, retry_at=retry_at)

    def _record_auth_failure(self, source: SourceSettings, error: str,
                             config_hash: str) -> PollResult:
        now = self.clock()
        with Session(self.engine) as session:
            state = session.get(SourceState, source.id) or SourceState(source_id=source.id)
            state.last_poll_at = state.last_error_at = now
            state.last_error = error[:2000]
            state.consecutive_failures += 1
            state.disabled_reason = f"credentials refused: {error}"[:2000]
            state.disabled_config_hash = config_hash
            state.failure_notified = True
            audit(session, "daemon", "source.disabled", "source", source.id, reason=error)
            queue_admin_notice(session, self.settings, f"auth:{source.id}:{config_hash}",
                               f"source {source.id} disabled: credentials refused",
                               [f"Source {source.id} ({source.connector}) was refused access: "
                                f"{error}", "It is disabled until its configuration (or the "
                                "credentials it names) changes and the daemon is restarted."],
                               now=now)
            session.add(state)
            session.commit()
        log.error("source %s disabled until its config changes: %s", source.id, error)
        return PollResult(source.id, "auth_failed", error=error)

    # --- delivery ------------------------------------------------------------------

    def release_stale_leases(self) -> int:
        """At start of a single daemon, take back outbox leases a killed run left behind."""
        if self.settings.scheduler.replicas:
            return 0  # other replicas may hold them: their leases expire instead
        with Session(self.engine) as session:
            count = session.exec(update(OutboxMessage).where(
                OutboxMessage.status == "pending", OutboxMessage.leased_until.is_not(None))
                .values(leased_until=None)).rowcount
            session.commit()
        if count:
            log.info("%d outbox messages were mid-send when the last run stopped; retrying them",
                     count)
        return count

    def _refused(self, row: OutboxMessage, error: str) -> None:
        """Tell the admin, once a day per address, that a relay refuses a recipient."""
        if row.kind == "admin":
            return
        now = self.clock()
        try:
            self._queue_refusal(row, error, now)
        except Exception as exc:  # reporting must not stop the outbox pass
            log.warning("could not queue the admin notice about %s: %s", row.recipient,
                        describe_error(exc))

    def _queue_refusal(self, row: OutboxMessage, error: str, now: datetime) -> None:
        with Session(self.engine) as session:
            queue_admin_notice(
                session, self.settings, f"refused:{row.recipient.lower()}:{now:%Y%m%d}",
                f"mail to {row.recipient} is refused",
                [f"The mail relay permanently refuses {row.recipient} ({row.role or 'no role'}"
                 f"{', ' + row.school_id if row.school_id else ''}): {error}",
                 f"{row.kind.capitalize()} messages to this address are kept and retried every "
                 "few hours, but nobody is receiving them. Fix the address in the config or "
                 "the mailbox."], now=now)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()  # already reported today

    def deliver_outbox(self) -> DeliveryReport:
        """Send due messages; never raises."""
        try:
            report = deliver_due(self.engine, self.channel, now=self.clock,
                                 lease=timedelta(seconds=self.settings.scheduler.lease),
                                 on_permanent=self._refused)
        except Exception:
            log.exception("outbox pass failed; messages stay queued")
            report = DeliveryReport()
        self.metrics.record_delivery(report)
        return report

    def send_digests(self, period: str, at: str | None = None) -> None:
        """Queue and send the digests due now; never raises."""
        try:
            if queue_digests(self.engine, self.settings, period, self.clock(), at):
                self.deliver_outbox()
        except Exception:
            log.exception("%s digest failed; it is tried again at its next time", period)

    def escalate(self) -> None:
        """Escalate overdue safeguarding incidents; never raises."""
        try:
            if escalate_due(self.engine, self.settings, self.clock()):
                self.deliver_outbox()
        except Exception:
            log.exception("escalation check failed; it runs again in a minute")

    def forget_erased_stories(self) -> None:
        """Keep the story index free of mentions erased or purged by another process; never raises."""
        if self._story_index is None:
            return
        try:
            gone = self._story_index.forget_missing(self.engine)
        except Exception as exc:
            log.warning("story index check failed (%s); it runs again later", describe_error(exc))
            return
        if gone:
            log.info("story index: forgot %d mentions no longer in the store", gone)

    def purge(self) -> None:
        """The daily retention purge; never raises."""
        try:
            purge(self.engine, self.settings.retention, now=self.clock())
        except Exception:
            log.exception("retention purge failed; it runs again tomorrow")
        self.forget_erased_stories()

    def close(self) -> None:
        """Close connectors and channels."""
        for plugin in [*self._connectors.values(), *self._channels.values()]:
            try:
                plugin.close()
            except Exception:
                log.exception("error closing %s", type(plugin).__name__)


def describe_error(exc: BaseException) -> str:
    """A short, post-free description: a database error's message quotes its SQL parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # psycopg adds LINE/DETAIL lines that can quote the row: the first line says enough.
        first = str(exc.orig).strip().splitlines()
        return f"database error: {first[0] if first else type(exc.orig).__name__}"
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {type(exc).__name__}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _unique(mentions: Sequence[Mention]) -> list[Mention]:
    """The batch without repeats of one platform id (feeds do repeat entries)."""
    seen: dict[tuple[str, str], Mention] = {}
    for mention in mentions:
        seen.setdefault((mention.platform, mention.external_id), mention)
    return list(seen.values())


def _config_hash(source: SourceSettings) -> str:
    """Identifies a source's config and the secrets it names; a disabled source wakes when either changes."""
    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"env"}:
                secret = os.environ.get(str(value["env"]), "")
                return {"env": value["env"], "sha256": hashlib.sha256(secret.encode()).hexdigest()}
            return {k: resolve(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value
    data = json.dumps(resolve(source.model_dump(mode="json")), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]
