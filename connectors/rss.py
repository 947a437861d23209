"""RSS and Atom feeds (news, blogs, Google Alerts, YouTube channel feeds), or local files."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import feedparser
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from connectors.base import Batch, Connector, Mention, NotConfigured, TransientError
from connectors.http import DEFAULT_MAX_BYTES, HttpClient
from connectors.text import html_to_text

log = logging.getLogger(__name__)


class RssConfig(BaseModel):
    """Options for an RSS/Atom source: a URL, or a local file path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    path: Path | None = None
    timeout: float = Field(20.0, gt=0, le=120)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024, le=100 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("url must start with http:// or https:// (use path for files)")
        return value

    @field_validator("path")
    @classmethod
    def _relative_to_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if value is not None and not value.is_absolute() and base is not None:
            return Path(base) / value
        return value

    @model_validator(mode="after")
    def _one_location(self) -> RssConfig:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url or path")
        return self


class RssConnector(Connector):
    """Fetches a feed with conditional GET and yields its entries as mentions."""

    Config = RssConfig
    config: RssConfig

    def __init__(self, config: RssConfig, school: Any, source_id: str) -> None:
        super().__init__(config, school, source_id)
        self.http = HttpClient(timeout=config.timeout, max_bytes=config.max_bytes)

    def fetch(self, cursor: str | None) -> Batch:
        """Fetch the feed; a 304 costs one request and yields nothing."""
        state = _load_cursor(cursor)
        if self.config.path is not None:
            body = self._read_file(self.config.path)
            new_state: dict[str, str] = {}
        else:
            headers = {}
            if state.get("etag"):
                headers["If-None-Match"] = state["etag"]
            if state.get("modified"):
                headers["If-Modified-Since"] = state["modified"]
            response = self.http.get(self.config.url, headers=headers, ok=(200, 304))
            if response.status == 304:
                return Batch(mentions=[], next_cursor=cursor, cost=1)
            body = response.body
            new_state = {k: v for k, v in (("etag", response.header("ETag")),
                                          ("modified", response.header("Last-Modified"))) if v}
        mentions = parse_feed(body, source=self.config.url or str(self.config.path))
        return Batch(mentions=mentions, next_cursor=json.dumps(new_state) if new_state else None,
                     cost=1)

    def _read_file(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.config.max_bytes:
                raise TransientError(f"{path} is {size} bytes, over the {self.config.max_bytes} cap")
            return path.read_bytes()
        except FileNotFoundError:
            raise NotConfigured(f"feed file {path} does not exist") from None
        except OSError as exc:
            raise TransientError(f"cannot read {path}: {exc.strerror}") from None

    def close(self) -> None:
        """Close the HTTP session."""
        self.http.close()


# Numeric references to code points no document may carry (surrogates, NUL, beyond
# U+10FFFF) make feedparser itself raise; they become U+FFFD before it sees them.
_NUMERIC_REFERENCE = re.compile(rb"&#([xX][0-9a-fA-F]{1,16}|[0-9]{1,16});")


def _safe_reference(match: re.Match[bytes]) -> bytes:
    digits = match.group(1)
    code = int(digits[1:], 16) if digits[:1] in (b"x", b"X") else int(digits)
    if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        return b"&#xFFFD;"
    return match.group(0)


def parse_feed(body: bytes, source: str) -> list[Mention]:
    """Mentions from a feed document; a document that is not a readable feed is an error."""
    try:
        parsed = feedparser.parse(_NUMERIC_REFERENCE.sub(_safe_reference, body))
    except Exception as exc:  # feedparser has no documented exceptions; none may escape
        raise TransientError(f"unreadable feed from {source}: {type(exc).__name__}") from None
    if parsed.bozo and not parsed.entries:
        reason = getattr(parsed.get("bozo_exception"), "getMessage", None)
        detail = reason() if reason else str(parsed.get("bozo_exception"))
        raise TransientError(f"malformed feed from {source}: {detail[:200]}")
    if not parsed.entries and not parsed.get("version"):
        # A login or consent page is well-formed HTML, not an empty feed: say so.
        raise TransientError(f"not an RSS or Atom feed: {source} (a web page? check the URL)")
    fetched_at = datetime.now(UTC)
    mentions = []
    for entry in parsed.entries:
        mention = _mention(entry, parsed.feed, fetched_at)
        if mention is not None:
            mentions.append(mention)
    return mentions


def _mention(entry: Any, feed: Any, fetched_at: datetime) -> Mention | None:
    link = unwrap_google_redirect(entry.get("link") or "")
    title = html_to_text(entry.get("title"))
    summary = html_to_text(_entry_body(entry))
    if not (title or summary):
        return None
    external_id = entry.get("id") or link or hashlib.sha256(
        f"{title}\n{summary}".encode()).hexdigest()
    published = entry.get("published_parsed") or entry.get("updated_parsed")
    return Mention(
        platform=_platform(feed),
        external_id=str(external_id)[:512],
        url=link,
        author=html_to_text(entry.get("author")) or html_to_text(feed.get("title")) or None,
        title=title or None,
        text=summary or title,
        published_at=datetime.fromtimestamp(time.mktime(published), UTC) if published else fetched_at,
        fetched_at=fetched_at,
        raw=_json_safe(entry),
    )


def _entry_body(entry: Any) -> str:
    if entry.get("content"):
        return " ".join(part.get("value", "") for part in entry["content"])
    return entry.get("summary") or ""


def _platform(feed: Any) -> str:
    link = (feed.get("link") or "").lower()
    if "google.com/alerts" in link or "google alert" in (feed.get("title") or "").lower():
        return "google_alerts"
    if "news.google.com" in link:
        return "google_news"
    if "youtube.com" in link:
        return "youtube"
    return "rss"


def unwrap_google_redirect(url: str) -> str:
    """The target of a google.com/url?url=... redirect (Google Alerts wraps every link)."""
    parts = urlsplit(url)
    if parts.netloc.endswith("google.com") and parts.path == "/url":
        query = parse_qs(parts.query)
        for key in ("url", "q"):
            if query.get(key):
                return query[key][0]
    return url


def _json_safe(entry: Any) -> dict[str, Any]:
    """The entry as plain JSON data; feedparser's parsed times are dropped (the strings stay)."""
    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items() if not str(k).endswith("_parsed")}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return str(value)
    return convert(dict(entry))


def _load_cursor(cursor: str | None) -> dict[str, str]:
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
