"""The TOML config: pydantic models, env-only secrets, errors that name their TOML path."""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from classifiers.base import Category, Severity
from monitor import registry
from monitor.clustering import ClusteringSettings
from monitor.evidence.settings import EvidenceSettings
from monitor.secrets import EnvSecret

DEFAULT_STORE_URL = "sqlite:///schoolwatch.db"
DEFAULT_TIMEZONE = "Europe/London"
MIN_SOURCE_INTERVAL = 60
MAX_SOURCE_INTERVAL = 7 * 24 * 3600


class ConfigError(Exception):
    """The config cannot be used; ``lines`` holds one ``path: problem`` per error."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


_DURATION_PART = re.compile(r"(\d+)\s*([smhd])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> int:
    """Seconds from an int or a string such as "90s", "15m", "1h30m", "1d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15m")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 15m")
    text = value.strip()
    if text.isdigit():
        return int(text)
    parts = _DURATION_PART.findall(text)
    if not parts or _DURATION_PART.sub("", text).strip():
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 15m, 1h or 1d")
    return sum(int(amount) * _UNIT_SECONDS[unit.lower()] for amount, unit in parts)


Duration = Annotated[int, BeforeValidator(parse_duration)]

_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_SLUG = r"^[a-z0-9][a-z0-9_-]*$"


class Strict(BaseModel):
    """Base for every config table: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(Strict):
    """Where the database lives."""

    url: str = DEFAULT_STORE_URL

    @field_validator("url")
    @classmethod
    def _no_password_in_file(cls, url: str) -> str:
        try:
            password = make_url(url).password
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if password:
            # libpq reads these itself; the file must not hold the secret.
            raise ValueError("a password in the URL is a secret in the file: leave it out and "
                             "set PGPASSWORD in the environment, or use ~/.pgpass")
        return url


class ClassifierSettings(Strict):
    """Which classifier plugin runs, and its options."""

    # The transformer with the rules as a safety net: the rules alone miss most self-harm.
    name: str = "ensemble"
    options: dict[str, Any] = Field(default_factory=dict)


class EmailSettings(Strict):
    """How alert email leaves: SMTP when configured, else .eml files in a folder."""

    sender: str = "Schoolwatch <schoolwatch@localhost>"
    backend: Literal["smtp", "file"] | None = None
    outbox_dir: str = "outbox"
    # Validated by the smtp channel's own Config (host, port, security, username, password).
    smtp: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _backend_needs_smtp(self) -> EmailSettings:
        if self.backend == "smtp" and self.smtp is None:
            raise ValueError("backend is smtp but there is no [email.smtp] table")
        return self

    @property
    def channel(self) -> str:
        """The channel plugin that carries email."""
        return self.backend or ("smtp" if self.smtp else "file")


class SchedulerSettings(Strict):
    """Polling and delivery timings."""

    jitter: Duration = Field(30, ge=0, le=3600)
    outbox_interval: Duration = Field(60, ge=5, le=3600)
    # After this many failed polls in a row the admin hears about the source, once.
    failures_before_alert: int = Field(5, ge=1, le=1000)
    # Several daemons share this database: each source is then polled by one of them,
    # at most once per interval (less jitter), through leases in the database.
    replicas: bool = False
    # How long a daemon holds a source or an outbox message before another may take it
    # over (it died): longer than the slowest poll or SMTP send.
    lease: Duration = Field(120, ge=5, le=3600)


class AdminSettings(Strict):
    """Who hears about broken sources and undeliverable mail."""

    recipients: list[str] = Field(default_factory=list)

    @field_validator("recipients")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return [_check_email(v) for v in value]


def _check_email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


class RetentionSettings(Strict):
    """How long each kind of record is kept (UK GDPR storage limitation); days."""

    # Mentions about the school that were not flagged, and their verdicts.
    unflagged_days: int = Field(30, ge=1, le=3650)
    # Flagged incidents, by category, counted from the last mention. Set safeguarding to
    # the school's safeguarding records policy; the default is a cautious starting point.
    safeguarding_days: int = Field(2190, ge=30, le=36500)
    disparaging_days: int = Field(730, ge=30, le=36500)
    reputational_days: int = Field(365, ge=30, le=36500)
    # Incidents staff closed as false positives.
    false_positive_days: int = Field(30, ge=1, le=3650)
    # Delivered messages (they quote the post); undelivered ones are never purged.
    sent_messages_days: int = Field(90, ge=1, le=3650)
    # Platform ids of everything fetched (no text), so old items are not processed again.
    seen_ids_days: int = Field(90, ge=7, le=3650)
    # Staff verdicts kept as training examples.
    feedback_days: int = Field(365, ge=1, le=3650)
    # When the daily purge runs (local time, HH:MM).
    purge_at: str = Field("03:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")

    def for_category(self, category: str) -> int:
        """Days an incident of ``category`` is kept."""
        return getattr(self, f"{category}_days", self.unflagged_days)


class SchoolSettings(Strict):
    """A watched school: its names, what is not it, and who hears about what."""

    id: str = Field(pattern=_SLUG)
    name: str = Field(min_length=2)
    aliases: list[str] = Field(default_factory=list)
    handles: list[str] = Field(default_factory=list)
    exclusions: list[str] = Field(default_factory=list)
    recipients: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("recipients")
    @classmethod
    def _recipient_emails(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, people in value.items():
            if not re.match(_SLUG, role):
                raise ValueError(f"role {role!r} must be lower-case letters, digits, - or _")
            for person in people:
                _check_email(person)
        return value


class SourceSettings(Strict):
    """One thing to poll: a connector, its options and how often."""

    id: str = Field(pattern=_SLUG)
    school: str
    connector: str
    interval: Duration = 900
    enabled: bool = True
    # Limit which categories are assessed (X's terms restrict health and crime inference).
    categories: list[Category] | None = None
    # False for sources that are about the school by construction (its own review page,
    # comments on its own videos), where posts need not name it.
    require_mention: bool = True
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("interval")
    @classmethod
    def _interval_bounds(cls, value: int) -> int:
        # Tests of timing-dependent behaviour lower the floor; nothing else should.
        floor = int(os.environ.get("SCHOOLWATCH_MIN_INTERVAL", MIN_SOURCE_INTERVAL))
        if not floor <= value <= MAX_SOURCE_INTERVAL:
            raise ValueError(
                f"must be between {floor}s and 7d (got {value}s); "
                "polling faster gets a source rate-limited"
            )
        return value


_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d$"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class RouteSettings(Strict):
    """Which category, from which severity, goes to which roles, how and when."""

    category: Category
    roles: list[str] = Field(min_length=1)
    min_severity: Severity = Severity.LOW
    # immediate: an email per incident; daily / weekly: listed in that digest instead.
    cadence: Literal["immediate", "daily", "weekly"] = "immediate"
    # Local time of the digest (daily and weekly) and its day (weekly).
    at: str = Field("07:30", pattern=_CLOCK)
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                 "sunday"] = "monday"
    # Limit the route to some schools (a trust with different arrangements per school).
    schools: list[str] | None = None
    # Channels: "email" (the default) and/or names of [channels.NAME] tables (Teams, Slack, SMS).
    channels: list[str] = Field(default_factory=lambda: ["email"], min_length=1)

    def applies_to(self, school_id: str) -> bool:
        """True when this route covers the school."""
        return self.schools is None or school_id in self.schools

    @field_validator("category")
    @classmethod
    def _not_none(cls, value: Category) -> Category:
        if value is Category.NONE:
            raise ValueError("routes are for flagged categories: safeguarding, disparaging, reputational")
        return value


class AlertingSettings(Strict):
    """Quiet hours, spreading stories, and escalation of unacknowledged safeguarding alerts."""

    # Non-safeguarding immediate alerts queued in these local hours wait until the end.
    quiet_hours_start: str | None = Field(None, pattern=_CLOCK)
    quiet_hours_end: str | None = Field(None, pattern=_CLOCK)
    # An open incident that reaches one of these mention counts sends one update.
    volume_steps: list[int] = Field(default_factory=lambda: [10, 50, 200])
    # A high-severity safeguarding incident nobody acknowledged after this long goes to
    # the next roles on the list, one step per interval.
    escalate_after: Duration = Field(1800, ge=60, le=7 * 86400)
    escalation_roles: list[str] = Field(default_factory=lambda: ["headteacher"])
    # Trend window shown in digests, days.
    trend_days: int = Field(14, ge=7, le=90)

    @model_validator(mode="after")
    def _both_ends(self) -> AlertingSettings:
        if (self.quiet_hours_start is None) != (self.quiet_hours_end is None):
            raise ValueError("give both quiet_hours_start and quiet_hours_end, or neither")
        if sorted(set(self.volume_steps)) != self.volume_steps or any(v < 2 for v in self.volume_steps):
            raise ValueError("volume_steps must be increasing counts of at least 2")
        return self


class HealthSettings(Strict):
    """The optional local health endpoint (/healthz, /metrics) for the admin's monitoring."""

    # host:port to listen on, e.g. "127.0.0.1:9108"; left out, no endpoint is opened.
    listen: str | None = Field(None, pattern=r"^[\w.\-:\[\]]+:\d{1,5}$")

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port), or None when off."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class ChannelSettings(Strict):
    """A notification channel besides email, through Apprise (Teams, Slack, SMS gateways...)."""

    # Apprise URLs carry tokens, so each is read from the environment.
    urls: list[EnvSecret] = Field(min_length=1)


DEFAULT_ROUTES: tuple[RouteSettings, ...] = (
    RouteSettings(category=Category.SAFEGUARDING, roles=["dsl"]),
    RouteSettings(category=Category.DISPARAGING, roles=["headteacher"]),
    RouteSettings(category=Category.REPUTATIONAL, roles=["headteacher"]),
)


class Settings(Strict):
    """The whole config file."""

    timezone: str = DEFAULT_TIMEZONE
    store: StoreSettings = Field(default_factory=StoreSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    email: EmailSettings = Field(default_factory=EmailSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)
    incidents: ClusteringSettings = Field(default_factory=ClusteringSettings)
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    channels: dict[str, ChannelSettings] = Field(default_factory=dict)
    schools: list[SchoolSettings] = Field(min_length=1)
    sources: list[SourceSettings] = Field(default_factory=list)
    routes: list[RouteSettings] = Field(default_factory=lambda: list(DEFAULT_ROUTES))
    # Folder that relative file paths in source options are resolved against.
    base_dir: Path = Field(default=Path("."), exclude=True)

    def school(self, school_id: str) -> SchoolSettings:
        """The school with this id."""
        return next(s for s in self.schools if s.id == school_id)

    def source(self, source_id: str) -> SourceSettings:
        """The source with this id, or KeyError."""
        for source in self.sources:
            if source.id == source_id:
                return source
        raise KeyError(source_id)


def load_config(path: str | Path) -> Settings:
    """Read, validate and return the config at ``path``, or raise ConfigError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(data, base_dir=path.resolve().parent)


def parse_config(data: dict[str, Any], base_dir: Path | None = None) -> Settings:
    """Validate a parsed TOML document, collecting every error before raising."""
    try:
        settings = Settings.model_validate({**data, "base_dir": base_dir or Path(".")})
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, Settings)) from None
    errors = list(_cross_check(settings))
    if errors:
        raise ConfigError(errors)
    return settings


def _cross_check(settings: Settings) -> Iterable[str]:
    """Errors that need more than one table: ids, roles, plugin names and options."""
    school_ids = [s.id for s in settings.schools]
    yield from _duplicates("schools", school_ids)
    yield from _duplicates("sources", [s.id for s in settings.sources])
    roles = {role for s in settings.schools for role, people in s.recipients.items() if people}
    for i, route in enumerate(settings.routes):
        for role in route.roles:
            if role not in roles:
                yield (f"routes[{i}].roles: no school defines recipients for role {role!r}"
                       f" (defined: {', '.join(sorted(roles)) or 'none'})")
        for school in route.schools or []:
            if school not in school_ids:
                yield f"routes[{i}].schools: unknown school {school!r}; known: {', '.join(school_ids)}"
        for channel in route.channels:
            if channel != "email" and channel not in settings.channels:
                known = ", ".join(["email", *settings.channels])
                yield f"routes[{i}].channels: unknown channel {channel!r}; known: {known}"
    for role in settings.alerting.escalation_roles:
        if role not in roles:
            yield (f"alerting.escalation_roles: no school defines recipients for role {role!r}"
                   f" (defined: {', '.join(sorted(roles)) or 'none'})")
    for i, school in enumerate(settings.schools):
        for route in settings.routes:
            if route.category is Category.SAFEGUARDING and route.applies_to(school.id) and not any(
                school.recipients.get(role) for role in route.roles
            ):
                yield (f"schools[{i}].recipients: no one for safeguarding alerts "
                       f"(add {' or '.join(route.roles)})")
    for i, source in enumerate(settings.sources):
        if source.school not in school_ids:
            yield (f"sources[{i}].school: unknown school {source.school!r}; "
                   f"known: {', '.join(school_ids)}")
        yield from _check_plugin_options(
            f"sources[{i}]", registry.CONNECTORS, source.connector, "connector", source.options,
            base_dir=settings.base_dir,
        )
    yield from _check_plugin_options(
        "classifier", registry.CLASSIFIERS, settings.classifier.name, "name",
        settings.classifier.options,
    )
    if settings.email.channel == "smtp":
        yield from _check_plugin_options("email", registry.CHANNELS, "smtp", "backend",
                                         settings.email.smtp or {}, options_key="smtp")


def _check_plugin_options(
    prefix: str, group: str, name: str, name_key: str, options: dict[str, Any],
    options_key: str = "options", base_dir: Path | None = None,
) -> Iterable[str]:
    try:
        plugin = registry.load(group, name)
    except registry.UnknownPlugin as exc:
        yield f"{prefix}.{name_key}: {exc}"
        return
    except ImportError as exc:
        yield f"{prefix}.{name_key}: plugin {name!r} is installed but cannot load: {exc}"
        return
    try:
        plugin.Config.model_validate(options, context={"base_dir": base_dir})
    except ValidationError as exc:
        yield from format_validation_errors(exc, plugin.Config, prefix=f"{prefix}.{options_key}")


def validate_options(model: type[BaseModel], options: dict[str, Any], prefix: str,
                     base_dir: Path | None = None) -> BaseModel:
    """Validate a plugin's options table, raising ConfigError with TOML paths."""
    try:
        return model.model_validate(options, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, model, prefix=prefix)) from None


def _duplicates(table: str, ids: list[str]) -> Iterable[str]:
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if value in seen:
            yield f"{table}[{i}].id: {value!r} is used twice"
        seen.add(value)


def format_validation_errors(
    exc: ValidationError, model: type[BaseModel], prefix: str = ""
) -> list[str]:
    """One ``toml.path: message`` line per pydantic error."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [part for part in error["loc"] if not _is_pydantic_tag(part)]
        path = _toml_path(prefix, loc)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(model, loc)
        elif error["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return lines


def _is_pydantic_tag(part: Any) -> bool:
    # Pydantic adds validator names such as "function-before[...]" to some locations.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _toml_path(prefix: str, loc: list[Any]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _suggestion(model: type[BaseModel], loc: list[Any]) -> str:
    """' (did you mean ...?)' for a misspelt key, found by walking the model to its table."""
    fields = _fields_at(model, [p for p in loc[:-1] if not isinstance(p, int)])
    if not fields or not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], fields, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(sorted(fields))})"


def _fields_at(model: type[BaseModel], keys: list[str]) -> list[str]:
    current: Any = model
    for key in keys:
        field = getattr(current, "model_fields", {}).get(key)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return [name for name, f in current.model_fields.items() if not f.exclude]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
