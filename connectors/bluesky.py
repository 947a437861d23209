"""Bluesky: app.bsky.feed.searchPosts through an app-password session."""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors._common import (
    check_base_url,
    dump_cursor_map,
    json_object,
    load_cursor_map,
    parse_time,
    phrase,
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
from connectors.http import HttpClient, HttpResponse, raise_for_status
from connectors.text import clean_text
from monitor.secrets import EnvSecret

log = logging.getLogger(__name__)

MAX_PAGE = 100
# Errors after which a fresh access token may work.
_SESSION_ERRORS = {"ExpiredToken", "InvalidToken", "AuthenticationRequired"}
_DOMAIN_HANDLE = re.compile(r"^@?([a-z0-9-]+(\.[a-z0-9-]+)+)$", re.IGNORECASE)


class BlueskyConfig(BaseModel):
    """Options of a ``bluesky`` source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where the account logs in and searches: bsky.social or a self-hosted PDS.
    base_url: str = "https://bsky.social"
    # The account that searches (its handle, email or DID) and an app password for it.
    handle: str = Field(min_length=3)
    app_password: EnvSecret
    # Search queries, each run on its own (Bluesky search has no OR); built from the school.
    queries: list[str] | None = None
    lang: str | None = Field(None, pattern=r"^[a-z]{2,3}$")
    page_size: int = Field(50, ge=1, le=MAX_PAGE)
    max_pages: int = Field(5, ge=1, le=50)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)


def default_queries(school: SchoolContext) -> list[str]:
    """Exact phrases for the school's name and aliases, and mentions of its Bluesky handles."""
    queries = [q for q in map(phrase, school.search_terms) if q]
    for handle in school.handles:
        match = _DOMAIN_HANDLE.match(handle.strip())
        if match:
            queries.append(f"mentions:{match.group(1).lower()}")
    return list(dict.fromkeys(queries))


class BlueskyConnector(Connector):
    """Searches Bluesky posts newest first and stops at the newest one seen last time."""

    Config: ClassVar[type[BaseModel]] = BlueskyConfig
    platform = "bluesky"

    def __init__(self, config: BlueskyConfig, school: SchoolContext, source_id: str) -> None:
        super().__init__(config, school, source_id)
        self.config: BlueskyConfig = config
        self.http = HttpClient()
        self.queries = config.queries if config.queries is not None else default_queries(school)
        # Kept in memory only: createSession is tightly rate-limited, so refresh instead.
        self._access: SecretStr | None = None
        self._refresh: SecretStr | None = None

    def fetch(self, cursor: str | None) -> Batch:
        """Return posts newer than the newest one seen per query last time."""
        if not self.queries:
            raise NotConfigured("queries is empty: nothing to search for")
        state = load_cursor_map(cursor, self.source_id)
        mentions: dict[str, Mention] = {}
        new_state: dict[str, Any] = {}
        for query in self.queries:
            last = state.get(query) if isinstance(state.get(query), dict) else None
            posts, newest = self._search(query, last)
            for post in posts:
                mention = self._mention(post)
                if mention is not None:
                    mentions.setdefault(mention.external_id, mention)
            if newest or last:
                new_state[query] = newest or last
        log.info("bluesky source %s: %d new posts from %d queries", self.source_id,
                 len(mentions), len(self.queries))
        return Batch(mentions=list(mentions.values()), next_cursor=dump_cursor_map(new_state))

    def _search(self, query: str, last: dict[str, Any] | None
                ) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        """New posts for one query, and the marker of the newest of them."""
        last_uri = last.get("uri") if last else None
        last_at = parse_time(last.get("indexedAt")) if last else None
        params: dict[str, Any] = {"q": query, "sort": "latest", "limit": self.config.page_size}
        if self.config.lang:
            params["lang"] = self.config.lang
        found: list[dict[str, Any]] = []
        newest: tuple[datetime, dict[str, str]] | None = None
        for _ in range(self.config.max_pages):
            body = self._xrpc("app.bsky.feed.searchPosts", params)
            posts = body.get("posts")
            if not isinstance(posts, list):
                raise TransientError("searchPosts reply has no posts list")
            reached = False
            for post in posts:
                if not isinstance(post, dict) or not isinstance(post.get("uri"), str):
                    continue
                indexed = parse_time(post.get("indexedAt"))
                # "latest" sorts by a time close to, not equal to, indexedAt: finish the page.
                if post["uri"] == last_uri or (last_at and indexed and indexed < last_at):
                    reached = True
                    continue
                found.append(post)
                if indexed and (newest is None or indexed > newest[0]):
                    newest = (indexed, {"indexedAt": post["indexedAt"], "uri": post["uri"]})
            next_page = body.get("cursor")
            if reached or not posts or not next_page or last is None:
                break
            params["cursor"] = next_page
        else:
            log.warning("bluesky source %s: more than %d pages of new posts for %s; older ones "
                        "are skipped (raise max_pages or poll more often)", self.source_id,
                        self.config.max_pages, query)
        return found, newest[1] if newest else None

    def _xrpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """GET an XRPC query with the session, refreshing or logging in again once if needed."""
        response = self._get(method, params)
        if _session_expired(response):
            log.info("bluesky source %s: access token refused; refreshing the session",
                     self.source_id)
            self._refresh_session()
            response = self._get(method, params)
            if _session_expired(response):
                raise AuthFailed(f"Bluesky refused a fresh session for {self.config.handle}")
        return _ok_json(response, method)

    def _get(self, method: str, params: dict[str, Any]) -> HttpResponse:
        if self._access is None:
            self._login()
        assert self._access is not None  # _login sets it or raises
        return self.http.get(
            f"{self.config.base_url}/xrpc/{method}", params=params,
            headers={"Authorization": f"Bearer {self._access.get_secret_value()}",
                     "Accept": "application/json"},
            ok=(200, 400, 401),
        )

    def _login(self) -> None:
        """com.atproto.server.createSession with the handle and app password."""
        response = self.http.request(
            "POST", f"{self.config.base_url}/xrpc/com.atproto.server.createSession",
            json_body={"identifier": self.config.handle,
                       "password": self.config.app_password.get_secret_value()},
            ok=(200, 400, 401),
        )
        if response.status in (400, 401):
            error, message = _error(response)
            if error == "AuthFactorTokenRequired":
                message = "the account asks for a sign-in code; use an app password instead"
            raise AuthFailed(f"Bluesky login refused for {self.config.handle}: "
                             f"{error or response.status} {message}".rstrip())
        self._keep(_ok_json(response, "createSession"))
        log.info("bluesky source %s: logged in as %s", self.source_id, self.config.handle)

    def _refresh_session(self) -> None:
        """com.atproto.server.refreshSession; a refused refresh token means logging in again."""
        if self._refresh is None:
            self._login()
            return
        response = self.http.request(
            "POST", f"{self.config.base_url}/xrpc/com.atproto.server.refreshSession",
            headers={"Authorization": f"Bearer {self._refresh.get_secret_value()}"},
            ok=(200, 400, 401),
        )
        if response.status in (400, 401):
            log.info("bluesky source %s: refresh token refused (%s); logging in again",
                     self.source_id, _error(response)[0] or response.status)
            self._access = self._refresh = None
            self._login()
            return
        self._keep(_ok_json(response, "refreshSession"))

    def _keep(self, session: dict[str, Any]) -> None:
        access, refresh = session.get("accessJwt"), session.get("refreshJwt")
        if not isinstance(access, str) or not isinstance(refresh, str):
            raise TransientError("Bluesky session reply lacks accessJwt or refreshJwt")
        self._access, self._refresh = SecretStr(access), SecretStr(refresh)

    def _mention(self, post: dict[str, Any]) -> Mention | None:
        """A Mention from a postView."""
        uri = post["uri"]
        record = post.get("record") if isinstance(post.get("record"), dict) else {}
        author = post.get("author") if isinstance(post.get("author"), dict) else {}
        handle = author.get("handle")
        # at://<did>/app.bsky.feed.post/<rkey>
        parts = uri.removeprefix("at://").split("/")
        if len(parts) != 3:
            log.warning("bluesky source %s: skipping a post with uri %r", self.source_id, uri)
            return None
        did, _, rkey = parts
        who = handle if handle and handle != "handle.invalid" else did
        fetched = utcnow()
        return Mention(
            platform=self.platform, external_id=uri,
            url=f"https://bsky.app/profile/{who}/post/{rkey}", author=handle or did,
            text=clean_text(record.get("text") or ""),
            published_at=(parse_time(record.get("createdAt")) or parse_time(post.get("indexedAt"))
                          or fetched),
            fetched_at=fetched, raw=post,
        )

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()


def _error(response: HttpResponse) -> tuple[str | None, str]:
    """The XRPC error name and message of a failed reply, if it has them."""
    try:
        body = json.loads(response.body)
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    return (body.get("error") if isinstance(body.get("error"), str) else None,
            str(body.get("message") or ""))


def _session_expired(response: HttpResponse) -> bool:
    """True for the replies a fresh access token can cure: 401, or 400 ExpiredToken."""
    return response.status == 401 or (
        response.status == 400 and _error(response)[0] in _SESSION_ERRORS)


def _ok_json(response: HttpResponse, method: str) -> dict[str, Any]:
    """The JSON object of a 200 reply; 400 is a bad query, anything else maps as usual."""
    if response.status == 400:
        error, message = _error(response)
        raise NotConfigured(f"Bluesky rejected {method}: {error or 'HTTP 400'} {message}".rstrip())
    if response.status != 200:
        raise_for_status(response)
    return json_object(response)
