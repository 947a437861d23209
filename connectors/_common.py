"""Helpers the social connectors share: cursors, ids, timestamps, Link headers, URL rebasing."""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import parse_header_links, should_bypass_proxies

from connectors.base import TransientError
from connectors.http import (
    BODY_DEADLINE_FACTOR,
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    BodyTooLarge,
    BodyTooSlow,
    HttpResponse,
    read_capped,
)

log = logging.getLogger(__name__)



def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(UTC)


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO 8601 string such as ``2026-11-14T09:30:00.000Z``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def id_key(value: str) -> tuple[int, str]:
    """Sort key for snowflake-style ids sent as strings: longer is newer, then lexical."""
    # Numeric ids of different lengths compare wrongly as text ("99" > "100").
    return (len(value), value) if value.isdigit() else (0, value)


def newest_id(*ids: str | None) -> str | None:
    """The newest of some snowflake-style ids, ignoring None."""
    present = [i for i in ids if i]
    return max(present, key=id_key) if present else None


def load_cursor_map(cursor: str | None, source_id: str) -> dict[str, Any]:
    """The JSON object a cursor holds; an unreadable one starts afresh rather than fail forever."""
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("source %s: cursor is not a JSON object; starting from the newest posts",
                    source_id)
        return {}
    return value


def dump_cursor_map(state: dict[str, Any]) -> str | None:
    """Compact, stable JSON text for a cursor map (None when empty)."""
    return json.dumps(state, sort_keys=True, separators=(",", ":")) if state else None


def link_urls(response: HttpResponse) -> dict[str, str]:
    """The URLs of a response's ``Link`` header, by rel (``next``, ``prev``)."""
    header = response.header("Link")
    if not header:
        return {}
    return {link["rel"]: link["url"] for link in parse_header_links(header)
            if link.get("rel") and link.get("url")}


def same_origin(url: str, base_url: str) -> bool:
    """True when ``url`` has the scheme and host of ``base_url``, so a token may follow it."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


def check_base_url(value: str) -> str:
    """Validate an http(s) base URL and drop its trailing slash."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: a base URL has no query or fragment")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class ResponseTooLarge(requests.RequestException):
    """A response body went over the size cap."""


class RebaseAdapter(HTTPAdapter):
    """Sends requests meant for a library's hard-coded API host to ``base_url`` instead.

    Also gives libraries that call requests without limits (tweepy) the product's
    User-Agent, a timeout and a body size cap.
    """

    def __init__(self, base_url: str, *, user_agent: str = USER_AGENT,
                 timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self.base = urlsplit(check_base_url(base_url))
        self.user_agent = user_agent
        self.timeout = timeout
        self.max_bytes = max_bytes

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        """Rewrite the URL onto ``base_url``, then send with a timeout and a size cap."""
        parts = urlsplit(request.url or "")
        request.url = urlunsplit((self.base.scheme, self.base.netloc,
                                  self.base.path + parts.path, parts.query, ""))
        request.headers["User-Agent"] = self.user_agent
        # Proxies were chosen for the original host; re-check NO_PROXY for the new one.
        if proxies and should_bypass_proxies(request.url, no_proxy=None):
            proxies = {}
        response = super().send(request, stream=True, timeout=timeout or self.timeout,
                                verify=verify, cert=cert, proxies=proxies)
        if not stream:
            self._read_capped(response)
        return response

    def _read_capped(self, response: requests.Response) -> None:
        try:
            body = read_capped(response, self.max_bytes, BODY_DEADLINE_FACTOR * self.timeout)
        except BodyTooLarge as exc:
            response.close()
            raise ResponseTooLarge(str(exc)) from None
        except BodyTooSlow as exc:
            response.close()
            raise requests.Timeout(str(exc)) from None
        # What requests itself does when stream=False: keep the body on the response.
        response._content = body
        response._content_consumed = True
        response.close()


def rebase_session(session: requests.Session, hosts: tuple[str, ...], base_url: str) -> None:
    """Route every request ``session`` makes to one of ``hosts`` through a RebaseAdapter."""
    adapter = RebaseAdapter(base_url)
    for host in hosts:
        session.mount(host.rstrip("/") + "/", adapter)


def json_object(response: HttpResponse) -> dict[str, Any]:
    """The response body as a JSON object, or TransientError naming what came instead."""
    body = response.json()
    if not isinstance(body, dict):
        raise TransientError(f"expected a JSON object from {response.url.split('?', 1)[0]}, "
                             f"got {type(body).__name__}")
    return body


def remember(newest: list[str], older: list[str], limit: int) -> list[str]:
    """``newest`` then ``older``, without repeats, cut to ``limit`` items (a bounded seen-list)."""
    return list(dict.fromkeys([*newest, *older]))[:limit]


def rfc3339(moment: datetime) -> str:
    """``moment`` as RFC 3339 UTC text ending in Z, as Google's APIs expect."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def or_query(terms: tuple[str, ...] | list[str], operator: str) -> str:
    """The terms, each quoted as a phrase, joined by a platform's OR operator."""
    return operator.join(p for p in map(phrase, terms) if p)


def phrase(term: str) -> str | None:
    """A search term as one exact-phrase operand; quotes inside it become spaces."""
    cleaned = " ".join(term.replace('"', " ").split())
    return f'"{cleaned}"' if cleaned else None
