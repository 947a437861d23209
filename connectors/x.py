"""X (Twitter) recent search through tweepy, with a daily read budget because reads are paid."""
from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any, ClassVar

import requests
import tweepy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._common import (
    check_base_url,
    newest_id,
    parse_time,
    phrase,
    rebase_session,
    utcnow,
)
from connectors.base import (
    AuthFailed,
    Batch,
    Connector,
    Mention,
    NotConfigured,
    RateLimited,
    SchoolContext,
    TransientError,
)
from connectors.http import retry_time
from connectors.text import clean_text
from monitor.secrets import EnvSecret

log = logging.getLogger(__name__)

MAX_QUERY_LENGTH = 512
MIN_RESULTS = 10
MAX_RESULTS = 100
# The hosts tweepy hard-codes; requests to either are sent to the configured base_url.
TWEEPY_HOSTS = ("https://api.twitter.com", "https://api.x.com")
# X's rate-limit window, for a 429 that carries no reset header.
RATE_WINDOW = timedelta(minutes=15)
TWEET_FIELDS = ["created_at", "author_id", "lang", "conversation_id", "referenced_tweets",
                "note_tweet", "public_metrics"]
_X_HANDLE = re.compile(r"^@?([A-Za-z0-9_]{1,15})$")
_BEARER = re.compile(r"(Bearer\s+)[^\s'\",}]+")


class _RedactBearer(logging.Filter):
    """tweepy logs request headers, bearer token included, at DEBUG; blank the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "Bearer" in record.msg:
            record.msg = _BEARER.sub(r"\1[redacted]", record.msg)
        return True


_tweepy_log = logging.getLogger("tweepy.client")
if not any(isinstance(f, _RedactBearer) for f in _tweepy_log.filters):
    _tweepy_log.addFilter(_RedactBearer())


class _StaleSinceId(Exception):
    """X refused the since_id because it is older than the search window."""


class XConfig(BaseModel):
    """Options of an ``x`` source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bearer_token: EnvSecret
    base_url: str = "https://api.x.com"
    max_reads_per_day: int = Field(500, ge=MIN_RESULTS)
    page_size: int = Field(MAX_RESULTS, ge=MIN_RESULTS, le=MAX_RESULTS)
    max_pages: int = Field(5, ge=1, le=50)
    exclude_retweets: bool = True
    lang: str | None = Field(None, pattern=r"^[a-z]{2,3}$")
    # Author usernames come as "users" in the same reply; X may bill them as user reads.
    include_authors: bool = True

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)


def query_terms(school: SchoolContext) -> list[str]:
    """Query operands, highest priority first: the name, X handles, then aliases in order."""
    terms: list[str | None] = [phrase(school.name)]
    for handle in school.handles:
        match = _X_HANDLE.match(handle.strip())
        if match:  # handles of other platforms (a.bsky.social, @a@b.org) mean nothing on X
            terms.append(f"@{match.group(1)}")
    terms.extend(phrase(alias) for alias in school.aliases)
    seen: set[str] = set()
    unique = []
    for term in terms:
        if term and term.lower() not in seen:
            seen.add(term.lower())
            unique.append(term)
    return unique


def build_query(school: SchoolContext, *, exclude_retweets: bool = True,
                lang: str | None = None, limit: int = MAX_QUERY_LENGTH) -> tuple[str, list[str]]:
    """The recent-search query for a school and the terms dropped to fit ``limit`` characters."""
    terms = query_terms(school)
    suffix = (" -is:retweet" if exclude_retweets else "") + (f" lang:{lang}" if lang else "")
    dropped: list[str] = []
    while terms:
        group = terms[0] if len(terms) == 1 else f"({' OR '.join(terms)})"
        query = group + suffix
        if len(query) <= limit:
            return query, dropped
        dropped.insert(0, terms.pop())
    raise NotConfigured(
        f"the school name {school.name!r} alone makes an X query longer than {limit} characters"
    )


class XConnector(Connector):
    """Polls X recent search for posts naming the school, newest first, within a read budget."""

    Config: ClassVar[type[BaseModel]] = XConfig
    platform = "x"

    def __init__(self, config: XConfig, school: SchoolContext, source_id: str) -> None:
        super().__init__(config, school, source_id)
        self.config: XConfig = config
        self.query, dropped = build_query(
            school, exclude_retweets=config.exclude_retweets, lang=config.lang,
        )
        if dropped:
            log.warning("x source %s: query would pass X's %d-character limit; left out %s",
                        source_id, MAX_QUERY_LENGTH, ", ".join(dropped))
        # return_type=dict: we read the JSON ourselves and can reject malformed shapes.
        self.client = tweepy.Client(
            bearer_token=config.bearer_token.get_secret_value(),
            wait_on_rate_limit=False, return_type=dict,
        )
        rebase_session(self.client.session, TWEEPY_HOSTS, config.base_url)

    def daily_budget(self) -> int:
        """Posts this source may read per UTC day; the runner sets remaining_budget from it."""
        return self.config.max_reads_per_day

    def fetch(self, cursor: str | None) -> Batch:
        """Return posts newer than the ``since_id`` in ``cursor``, spending at most the budget."""
        budget = self.remaining_budget
        if budget is None:
            budget = self.config.max_reads_per_day
        if budget <= 0:
            log.info("x source %s: daily read budget of %d spent", self.source_id,
                     self.config.max_reads_per_day)
            return Batch(mentions=[], next_cursor=cursor, cost=0)

        since_id = cursor if cursor and cursor.isdigit() else None
        if cursor and since_id is None:
            log.warning("x source %s: ignoring unreadable cursor %r", self.source_id, cursor[:40])
        mentions: list[Mention] = []
        read, pages, newest, next_token = 0, 0, None, None
        fallback = cursor  # the cursor to return when nothing newer is found
        while pages < self.config.max_pages and read < budget:
            want = max(MIN_RESULTS, min(self.config.page_size, budget - read))
            try:
                body = self._search(since_id, want, next_token)
            except _StaleSinceId:
                # X refuses a since_id older than its 7-day window; start again from now.
                log.warning("x source %s: since_id %s is older than X's search window; "
                            "polling without it", self.source_id, since_id)
                since_id, next_token, fallback = None, None, None
                continue
            except TransientError as exc:
                if not pages:
                    raise
                # Later pages failed, but the first were paid for: hand them over and keep
                # the old cursor so the rest is fetched again rather than lost.
                log.warning("x source %s: page %d failed (%s); keeping %d posts, cursor unchanged",
                            self.source_id, pages + 1, exc, len(mentions))
                return Batch(mentions=mentions, next_cursor=cursor, cost=read)
            pages += 1
            posts, includes, meta = (body.get(k) for k in ("data", "includes", "meta"))
            if not isinstance(posts or [], list) or not isinstance(meta or {}, dict):
                raise TransientError("X recent search reply is not shaped like a search result")
            read += len(posts or [])
            page = self._mentions(posts or [], includes if isinstance(includes, dict) else {})
            mentions.extend(page)
            newest = newest_id(newest, *(m.external_id for m in page))
            next_token = (meta or {}).get("next_token")
            if not next_token:
                break
        else:
            if next_token:
                why = "read budget" if read >= budget else f"max_pages={self.config.max_pages}"
                log.warning("x source %s: stopped at %s with more posts waiting; older posts "
                            "since the last poll are skipped", self.source_id, why)
        log.info("x source %s: %d posts in %d pages", self.source_id, read, pages)
        return Batch(mentions=mentions, next_cursor=newest or fallback, cost=read)

    def _search(self, since_id: str | None, max_results: int, next_token: str | None) -> dict:
        """One page of recent search, with tweepy's and requests' errors mapped."""
        params: dict[str, Any] = {
            "max_results": max_results, "since_id": since_id, "next_token": next_token,
            "sort_order": "recency", "tweet_fields": TWEET_FIELDS,
        }
        if self.config.include_authors:
            params.update(expansions=["author_id"], user_fields=["username", "name"])
        try:
            body = self.client.search_recent_tweets(self.query, **params)
        except tweepy.BadRequest as exc:
            if since_id and not next_token and _names_parameter(exc, "since_id"):
                raise _StaleSinceId from None
            raise NotConfigured(f"X rejected the search query: {_describe(exc)}") from None
        except tweepy.TooManyRequests as exc:
            retry_at = retry_time(exc.response.headers.get) or utcnow() + RATE_WINDOW
            raise RateLimited(f"X rate limit reached; retry after {retry_at:%Y-%m-%d %H:%M:%S} UTC",
                              retry_at=retry_at) from None
        except (tweepy.Unauthorized, tweepy.Forbidden) as exc:
            raise AuthFailed(f"X refused the bearer token: {_describe(exc)}") from None
        except tweepy.TwitterServerError as exc:
            raise TransientError(f"X server error: {_describe(exc)}") from None
        except tweepy.HTTPException as exc:
            if exc.response.status_code == 402:
                raise TransientError("X says the account has no API credits left (402); "
                                     "add credits in the X Developer Console") from None
            raise TransientError(f"unexpected reply from X: {_describe(exc)}") from None
        except requests.JSONDecodeError:
            raise TransientError("malformed JSON from X recent search") from None
        except requests.RequestException as exc:
            raise TransientError(f"cannot reach X: {type(exc).__name__}: {exc}") from None
        if not isinstance(body, dict):
            raise TransientError("X recent search returned JSON that is not an object")
        return body

    def _mentions(self, posts: list[Any], includes: dict[str, Any]) -> list[Mention]:
        users = {str(u.get("id")): u for u in includes.get("users") or [] if isinstance(u, dict)}
        fetched = utcnow()
        mentions = []
        for post in posts:
            if not isinstance(post, dict) or not str(post.get("id", "")).isdigit():
                log.warning("x source %s: skipping a post without an id", self.source_id)
                continue
            post_id = str(post["id"])
            user = users.get(str(post.get("author_id"))) or {}
            username = user.get("username") if isinstance(user.get("username"), str) else None
            # Posts over 280 characters arrive truncated in "text"; the full text is here.
            note = post.get("note_tweet") if isinstance(post.get("note_tweet"), dict) else {}
            text = clean_text(str(note.get("text") or post.get("text") or ""))
            url = (f"https://x.com/{username}/status/{post_id}" if username
                   else f"https://x.com/i/web/status/{post_id}")
            mentions.append(Mention(
                platform=self.platform, external_id=post_id, url=url, author=username,
                text=text, published_at=parse_time(post.get("created_at")) or fetched,
                fetched_at=fetched, raw={**post, "author": user} if user else dict(post),
            ))
        return mentions

    def close(self) -> None:
        """Close tweepy's pooled connections."""
        self.client.session.close()


def _names_parameter(exc: tweepy.HTTPException, name: str) -> bool:
    """True when an X error reply blames the request parameter ``name``."""
    return any(isinstance(e, dict) and name in (e.get("parameters") or {}) for e in exc.api_errors)


def _describe(exc: tweepy.HTTPException) -> str:
    """Status and X's own messages, never the request (which carries the token)."""
    messages = "; ".join(str(m) for m in exc.api_messages[:3])
    return f"HTTP {exc.response.status_code}" + (f": {messages}" if messages else "")
