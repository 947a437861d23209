"""Reddit: site-wide search for the school's names and new posts in chosen subreddits (OAuth)."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors._common import (
    check_base_url,
    dump_cursor_map,
    json_object,
    load_cursor_map,
    or_query,
    remember,
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
from connectors.http import HttpClient, HttpResponse, raise_for_status, retry_time
from connectors.text import clean_text
from monitor import __version__
from monitor.secrets import EnvSecret

log = logging.getLogger(__name__)

WEB_URL = "https://www.reddit.com"
PAGE_SIZE = 100
MAX_QUERY_LENGTH = 512
# Search indexing lags and moderators approve held posts late, so each poll re-reads this far
# behind the newest post it has seen; the seen-list keeps the overlap from repeating.
OVERLAP_SECONDS = 3600.0
SEEN_LIMIT = 300
# Renew the token this long before Reddit says it expires.
TOKEN_MARGIN = timedelta(minutes=5)
# When Reddit says the window is spent but gives no reset time (its window is 10 minutes).
DEFAULT_WAIT = timedelta(minutes=10)
_SUBREDDIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{1,20}$")


class RedditConfig(BaseModel):
    """Options of a ``reddit`` source; the four credentials come from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: EnvSecret
    client_secret: EnvSecret
    username: EnvSecret
    password: EnvSecret
    # Search all of Reddit for the school's names (posts only: the API has no comment search).
    search: bool = True
    # Replaces the query built from the school's name and aliases.
    query: str | None = Field(None, min_length=1, max_length=MAX_QUERY_LENGTH)
    # Every new post in these subreddits is returned; the pipeline decides relevance.
    subreddits: list[str] = Field(default_factory=list)
    max_pages: int = Field(3, ge=1, le=10)
    base_url: str = "https://oauth.reddit.com"
    auth_url: str = "https://www.reddit.com/api/v1/access_token"
    timeout: float = Field(20.0, gt=0, le=120)

    @field_validator("base_url", "auth_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("subreddits")
    @classmethod
    def _subreddit_names(cls, value: list[str]) -> list[str]:
        names = []
        for raw in value:
            name = raw.strip().removeprefix("/").removeprefix("r/")
            if not _SUBREDDIT.match(name):
                raise ValueError(f"{raw!r} is not a subreddit name (write Harrowgate, not a URL)")
            names.append(name)
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _something_to_read(self) -> RedditConfig:
        if not self.search and not self.subreddits:
            raise ValueError("nothing to read: set search = true or list some subreddits")
        return self


class RedditConnector(Connector):
    """Reads Reddit listings newest first and returns the posts not seen before."""

    Config = RedditConfig
    config: RedditConfig

    def __init__(self, config: RedditConfig, school: SchoolContext, source_id: str) -> None:
        super().__init__(config, school, source_id)
        self.query = config.query or or_query(school.search_terms, " OR ")
        self.http = HttpClient(timeout=config.timeout)
        # Reddit's rules: <platform>:<app id>:<version> (by /u/<username>); generic agents are throttled.
        self.http.session.headers["User-Agent"] = (
            f"server:schoolwatch:{__version__} (by /u/{config.username.get_secret_value()})")
        self.now: Callable[[], datetime] = utcnow
        self._token: str | None = None
        self._token_expires = datetime.min.replace(tzinfo=UTC)
        self._limited_until: datetime | None = None

    def fetch(self, cursor: str | None) -> Batch:
        """Read each listing down to the posts already seen; resume long backlogs next time."""
        if self.config.search and len(self.query) > MAX_QUERY_LENGTH:
            raise NotConfigured(f"the search query built from the school's names is over "
                                f"{MAX_QUERY_LENGTH} characters; set a shorter options.query")
        if self._limited():
            raise RateLimited("Reddit's request window is spent", retry_at=self._limited_until)
        state = load_cursor_map(cursor, self.source_id)
        previous = state.get("listings") if isinstance(state.get("listings"), dict) else {}
        # Only configured listings are carried over, so a removed subreddit leaves the cursor.
        listings = {key: previous[key] for key, _, _ in self._listings() if key in previous}
        found: dict[str, dict[str, Any]] = {}
        calls = 0
        for key, path, params in self._listings():
            if self._limited():
                log.info("reddit source %s: request window spent; %s waits for the next poll",
                         self.source_id, key)
                break
            posts, listings[key], used = self._read_listing(key, path, params, previous.get(key))
            calls += used
            for post in posts:
                found.setdefault(post["name"], post)
        fetched_at = self.now()
        mentions = [_mention(post, fetched_at) for post in found.values()]
        return Batch(mentions=mentions, next_cursor=dump_cursor_map({"listings": listings}),
                     cost=calls)

    def close(self) -> None:
        """Close the HTTP session."""
        self.http.close()

    def _listings(self) -> list[tuple[str, str, dict[str, Any]]]:
        listings = []
        if self.config.search:
            listings.append(("search", "/search", {"q": self.query, "sort": "new", "type": "link"}))
        for name in self.config.subreddits:
            listings.append((f"r/{name.lower()}", f"/r/{name}/new", {}))
        return listings

    def _read_listing(self, key: str, path: str, params: dict[str, Any],
                      old: dict[str, Any] | None) -> tuple[list[dict[str, Any]], Any, int]:
        """New posts of one listing, its next state, and the requests it took."""
        old = old if isinstance(old, dict) else {}
        seen = [s for s in old.get("seen") or [] if isinstance(s, str)]
        newest = old.get("newest") if isinstance(old.get("newest"), (int, float)) else None
        resume = old.get("resume") if isinstance(old.get("resume"), dict) else None
        if resume:
            after, cutoff = resume.get("after"), resume.get("cutoff")
        else:
            after, cutoff = None, (newest - OVERLAP_SECONDS if newest is not None else None)
        # The first poll takes the newest page only, not years of history.
        first_poll = newest is None and resume is None
        pages = 1 if first_poll else self.config.max_pages
        known, posts, done, read = set(seen), [], False, 0
        while read < pages:
            if self._limited():
                break
            query = {**params, "limit": PAGE_SIZE, "raw_json": 1}
            if after:
                query["after"] = after
            listing = self._get_listing(key, path, query)
            read += 1
            if listing is None:
                return [], old or None, read
            for post in listing["children"]:
                created = post["created_utc"]
                if cutoff is not None and created < cutoff:
                    done = True
                    break
                if post["name"] not in known:
                    known.add(post["name"])
                    posts.append(post)
            after = listing["after"]
            if done or not after:
                done = True
                break
        if read == 0:
            return [], old or None, 0
        latest = max([p["created_utc"] for p in posts] + ([newest] if newest is not None else []),
                     default=None)
        if posts and not done and not first_poll:
            log.info("reddit source %s: more than %d pages of new posts in %s; "
                     "the rest follow on the next poll", self.source_id, pages, key)
        next_state = {
            "newest": latest,
            "seen": remember([p["name"] for p in posts], seen, SEEN_LIMIT),
            "resume": None if done or first_poll else {"after": after, "cutoff": cutoff},
        }
        return posts, next_state, read

    def _get_listing(self, key: str, path: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """One page of a listing as {after, children}; None when a subreddit cannot be read."""
        response = self._api_get(path, params)
        if response.status in (403, 404) and key.startswith("r/"):
            reason = _error_reason(response)
            if reason or response.status == 404:
                # A private, quarantined or banned subreddit is not a credentials problem.
                log.warning("reddit source %s: cannot read %s (%s %s); skipping it",
                            self.source_id, key, response.status, reason or "not found")
                return None
        if response.status != 200:
            raise_for_status(response)
        return _listing(json_object(response), path)

    def _api_get(self, path: str, params: dict[str, Any]) -> HttpResponse:
        """GET an API path with the bearer token, renewing it once if Reddit refuses it."""
        response = self._send(path, params)
        if response.status == 401:
            log.info("reddit source %s: token refused; fetching a new one", self.source_id)
            self._token = None
            response = self._send(path, params)
            if response.status == 401:
                raise AuthFailed("Reddit refused a freshly issued token (401); check the app's "
                                 "approval and the account")
        if response.status == 403 and not path.startswith("/r/"):
            raise AuthFailed("Reddit refused access (403); check that the app is approved "
                             "for API access and the account is not suspended")
        if response.status == 429:
            retry_at = self._limited_until or self.now() + DEFAULT_WAIT
            raise RateLimited(f"rate limited (429) by Reddit; retry after {retry_at:%H:%M:%S} UTC",
                              retry_at=retry_at)
        return response

    def _send(self, path: str, params: dict[str, Any]) -> HttpResponse:
        response = self.http.get(self.config.base_url + path, params=params,
                                 headers={"Authorization": f"bearer {self._access_token()}"},
                                 ok=(200, 401, 403, 404, 429))
        self._note_rate_limit(response)
        return response

    def _access_token(self) -> str:
        """A cached bearer token, renewed shortly before it expires."""
        if self._token and self.now() < self._token_expires:
            return self._token
        config = self.config
        response = self.http.request(
            "POST", config.auth_url,
            data={"grant_type": "password", "username": config.username.get_secret_value(),
                  "password": config.password.get_secret_value()},
            auth=(config.client_id.get_secret_value(), config.client_secret.get_secret_value()),
            ok=(200, 400, 401, 403),
        )
        if response.status in (401, 403):
            raise AuthFailed(f"Reddit refused the app's client id or secret ({response.status})")
        body = json_object(response)
        if response.status == 400 or "error" in body:
            # Reddit answers a wrong username or password with 200 and {"error": "invalid_grant"}.
            error = body.get("error", response.status)
            raise AuthFailed(f"Reddit refused the account's login ({error}); check username and "
                             "password, and that the account has no two-factor authentication")
        token, lifetime = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise TransientError("Reddit's token reply had no access_token")
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) else 3600.0
        margin = min(TOKEN_MARGIN, timedelta(seconds=lifetime / 2))
        self._token = token
        self._token_expires = self.now() + timedelta(seconds=lifetime) - margin
        log.debug("reddit source %s: new token valid for %.0fs", self.source_id, lifetime)
        return token

    def _note_rate_limit(self, response: HttpResponse) -> None:
        """Remember when Reddit's window reopens once it says none are left (or sends 429)."""
        remaining = response.header("X-Ratelimit-Remaining")
        try:
            spent = remaining is not None and float(remaining) < 1
        except ValueError:
            spent = False
        if spent or response.status == 429:
            self._limited_until = retry_time(response.header, self.now()) or self.now() + DEFAULT_WAIT

    def _limited(self) -> bool:
        if self._limited_until is None:
            return False
        if self.now() >= self._limited_until:
            self._limited_until = None
            return False
        return True


def _listing(body: dict[str, Any], path: str) -> dict[str, Any]:
    """The posts (t3 things) of a Listing and its ``after`` fullname, checked."""
    data = body.get("data")
    if body.get("kind") != "Listing" or not isinstance(data, dict) \
            or not isinstance(data.get("children"), list):
        raise TransientError(f"Reddit sent something other than a Listing for {path}")
    posts = []
    for child in data["children"]:
        post = child.get("data") if isinstance(child, dict) and child.get("kind") == "t3" else None
        if isinstance(post, dict) and isinstance(post.get("name"), str) \
                and isinstance(post.get("created_utc"), (int, float)):
            posts.append(post)
    after = data.get("after")
    return {"children": posts, "after": after if isinstance(after, str) and after else None}


def _error_reason(response: HttpResponse) -> str | None:
    """The ``reason`` Reddit gives for a refused subreddit (private, quarantined, banned)."""
    try:
        body = response.json()
    except TransientError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else None


def _mention(post: dict[str, Any], fetched_at: datetime) -> Mention:
    title = clean_text(post.get("title") or "")
    body = clean_text(post.get("selftext") or "")
    author = post.get("author")
    return Mention(
        platform="reddit",
        external_id=post["name"],
        url=WEB_URL + (post.get("permalink") or f"/comments/{post['name'].removeprefix('t3_')}/"),
        author=author if isinstance(author, str) and author != "[deleted]" else None,
        title=title or None,
        text=f"{title}\n\n{body}" if body else title,
        published_at=datetime.fromtimestamp(post["created_utc"], UTC),
        fetched_at=fetched_at,
        raw=post,
    )
