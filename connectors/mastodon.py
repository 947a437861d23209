"""Mastodon: hashtag timelines on one or more instances, and status search with a token."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._common import (
    check_base_url,
    dump_cursor_map,
    id_key,
    json_object,
    link_urls,
    load_cursor_map,
    newest_id,
    parse_time,
    phrase,
    same_origin,
    utcnow,
)
from connectors.base import (
    AuthFailed,
    Batch,
    Connector,
    Mention,
    NotConfigured,
    SchoolContext,
    TransientError,
)
from connectors.http import HttpClient, HttpResponse
from connectors.text import clean_text, html_to_text
from monitor.secrets import EnvSecret

log = logging.getLogger(__name__)

MAX_PAGE = 40  # Mastodon's cap on limit for timelines and search
_HASHTAG = re.compile(r"^\w+$")


class MastodonConfig(BaseModel):
    """Options of a ``mastodon`` source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The home instance: the token belongs here and status search runs here.
    base_url: str = "https://mastodon.social"
    # More instances whose public hashtag timelines are read too (no token is sent to them).
    instances: list[str] = Field(default_factory=list)
    # Without a list, the school's multi-word name and aliases written as one word.
    hashtags: list[str] | None = None
    token: EnvSecret | None = None
    # Phrases for status search (needs the token); the school's name and aliases by default.
    search_terms: list[str] | None = None
    page_size: int = Field(MAX_PAGE, ge=1, le=MAX_PAGE)
    max_pages: int = Field(5, ge=1, le=50)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("instances")
    @classmethod
    def _instances(cls, value: list[str]) -> list[str]:
        return [check_base_url(v) for v in value]

    @field_validator("hashtags")
    @classmethod
    def _hashtags(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        tags = [v.strip().lstrip("#") for v in value]
        for tag in tags:
            if not _HASHTAG.match(tag):
                raise ValueError(f"{tag!r} is not a hashtag (letters, digits and _ only)")
        return tags


def default_hashtags(school: SchoolContext) -> list[str]:
    """Hashtags people would use for the school: its handles and multi-word names run together."""
    tags = [handle.strip().lstrip("@") for handle in school.handles]
    tags += ["".join(re.findall(r"\w+", term)) for term in school.search_terms if " " in term]
    unique: dict[str, str] = {}
    for tag in tags:
        if _HASHTAG.match(tag):
            unique.setdefault(tag.lower(), tag)
    return list(unique.values())


@dataclass(frozen=True)
class _Unit:
    """One thing polled on one instance: a hashtag timeline or a status search."""

    instance: str
    kind: str  # "tag" or "search"
    query: str

    @property
    def key(self) -> str:
        """This unit's key in the cursor map."""
        # Hashtags are case-insensitive on Mastodon; search phrases are kept as written.
        query = self.query.lower() if self.kind == "tag" else self.query
        return f"{self.instance} {self.kind}:{query}"


class MastodonConnector(Connector):
    """Reads new statuses from hashtag timelines and, with a token, status search."""

    Config: ClassVar[type[BaseModel]] = MastodonConfig
    platform = "mastodon"

    def __init__(self, config: MastodonConfig, school: SchoolContext, source_id: str) -> None:
        super().__init__(config, school, source_id)
        self.config: MastodonConfig = config
        self.http = HttpClient()
        instances = list(dict.fromkeys([config.base_url, *config.instances]))
        tags = config.hashtags if config.hashtags is not None else default_hashtags(school)
        self.units = [_Unit(i, "tag", t) for i in instances for t in tags]
        if config.token is not None:
            terms = config.search_terms if config.search_terms is not None else school.search_terms
            self.units += [_Unit(config.base_url, "search", t) for t in terms if t.strip()]
        elif config.search_terms:
            log.warning("mastodon source %s: search_terms need a token; only hashtags are read",
                        source_id)

    def fetch(self, cursor: str | None) -> Batch:
        """Return statuses newer than each unit's last seen id; a failing instance skips itself."""
        if not self.units:
            raise NotConfigured("nothing to read: list hashtags, or add a token to search")
        state = load_cursor_map(cursor, self.source_id)
        new_state: dict[str, str] = {}
        mentions: dict[str, Mention] = {}
        failures: list[tuple[_Unit, Exception]] = []
        failed_instances: set[str] = set()
        for unit in self.units:
            last = state.get(unit.key) if isinstance(state.get(unit.key), str) else None
            if unit.instance in failed_instances:
                failures.append((unit, TransientError(f"{unit.instance} skipped after a failure")))
            else:
                try:
                    statuses = self._poll(unit, last)
                except TransientError as exc:
                    log.warning("mastodon source %s: %s failed: %s", self.source_id, unit.key, exc)
                    failures.append((unit, exc))
                    failed_instances.add(unit.instance)  # a down or limiting instance: spare it
                else:
                    for status in statuses:
                        mention = self._mention(status, unit.instance)
                        if mention is not None:
                            mentions.setdefault(mention.external_id, mention)
                    last = newest_id(last, *(str(s["id"]) for s in statuses))
            if last:
                new_state[unit.key] = last
        if failures and len(failures) == len(self.units):
            raise failures[0][1]
        log.info("mastodon source %s: %d new statuses from %d queries", self.source_id,
                 len(mentions), len(self.units) - len(failures))
        return Batch(mentions=list(mentions.values()), next_cursor=dump_cursor_map(new_state))

    def _poll(self, unit: _Unit, last: str | None) -> list[dict[str, Any]]:
        """Statuses newer than ``last`` (the newest page when None), oldest pages first."""
        if unit.kind == "search":
            return self._search(unit, last)
        url = f"{unit.instance}/api/v1/timelines/tag/{quote(unit.query, safe='')}"
        params: dict[str, Any] | None = {"limit": self.config.page_size}
        if last:
            # min_id pages forward from the last seen status, so stopping early leaves no gap.
            params["min_id"] = last
        found: list[dict[str, Any]] = []
        for _ in range(self.config.max_pages):
            response = self._get(unit, url, params)
            page = _statuses(response.json(), unit)
            found.extend(s for s in page if not last or id_key(str(s["id"])) > id_key(last))
            prev = link_urls(response).get("prev")
            if not last or len(page) < self.config.page_size or not prev:
                break
            if not same_origin(prev, unit.instance):
                log.warning("mastodon source %s: ignoring a Link to another host from %s",
                            self.source_id, unit.instance)
                break
            url, params = prev, None
        return found

    def _search(self, unit: _Unit, last: str | None) -> list[dict[str, Any]]:
        """Statuses matching a phrase, newer than ``last``; v2 search pages by offset."""
        url = f"{unit.instance}/api/v2/search"
        params: dict[str, Any] = {"q": phrase(unit.query), "type": "statuses", "resolve": "false",
                                  "limit": self.config.page_size}
        if last:
            params["min_id"] = last
        found: list[dict[str, Any]] = []
        for page_number in range(self.config.max_pages):
            params["offset"] = page_number * self.config.page_size
            body = json_object(self._get(unit, url, params))
            page = _statuses(body.get("statuses", []), unit)
            found.extend(s for s in page if not last or id_key(str(s["id"])) > id_key(last))
            if not last or len(page) < self.config.page_size:
                break
        return found

    def _get(self, unit: _Unit, url: str, params: dict[str, Any] | None) -> HttpResponse:
        """GET with the token only on the home instance; name the instance when refused."""
        headers = {"Accept": "application/json"}
        home = unit.instance == self.config.base_url
        if home and self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        try:
            return self.http.get(url, params=params, headers=headers)
        except AuthFailed as exc:
            if home and self.config.token is not None:
                raise AuthFailed(f"{unit.instance} refused the token: {exc}") from None
            raise AuthFailed(f"{unit.instance} does not serve hashtag timelines without logging "
                             f"in: add a token for base_url or drop this instance ({exc})") from None

    def _mention(self, status: dict[str, Any], instance: str) -> Mention | None:
        """A Mention from a Status entity; boosts count as the boosted status."""
        post = status.get("reblog") if isinstance(status.get("reblog"), dict) else status
        uri = post.get("uri") or post.get("url")
        if not isinstance(uri, str):
            log.warning("mastodon source %s: skipping status %s without a uri", self.source_id,
                        status.get("id"))
            return None
        account = post.get("account") if isinstance(post.get("account"), dict) else {}
        acct = account.get("acct")
        if isinstance(acct, str) and acct and "@" not in acct:
            acct = f"{acct}@{urlsplit(instance).hostname}"  # local accounts come without a domain
        body = html_to_text(post.get("content") or "")
        # The content warning often says what the post is about; keep it with the text.
        warning = clean_text(post.get("spoiler_text") or "")
        fetched = utcnow()
        return Mention(
            # The ActivityPub uri is the same on every instance; local ids are not.
            platform=self.platform, external_id=uri, url=post.get("url") or uri,
            author=acct or None, text=f"{warning}\n\n{body}" if warning else body,
            published_at=parse_time(post.get("created_at")) or fetched, fetched_at=fetched,
            raw=status,
        )

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()


def _statuses(value: Any, unit: _Unit) -> list[dict[str, Any]]:
    """The statuses of a reply that has ids; anything else is a malformed reply."""
    if not isinstance(value, list):
        raise TransientError(f"{unit.instance} sent something other than a list of statuses")
    return [s for s in value if isinstance(s, dict) and isinstance(s.get("id"), str | int)]
