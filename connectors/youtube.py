"""YouTube Data API v3: videos that name the school, and comments on the school's own channel."""
from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors._common import (
    check_base_url,
    dump_cursor_map,
    json_object,
    load_cursor_map,
    or_query,
    parse_time,
    remember,
    rfc3339,
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
from connectors.http import HttpClient, HttpResponse
from connectors.text import clean_text
from monitor.secrets import EnvSecret

log = logging.getLogger(__name__)

WATCH_URL = "https://www.youtube.com/watch"
# Quota units per call (developers.google.com/youtube/v3/determine_quota_cost).
UNIT_COST = {"search": 100, "commentThreads": 1, "playlistItems": 1, "channels": 1}
DEFAULT_DAILY_UNITS = 10_000
SEARCH_PAGE_SIZE = 50
COMMENT_PAGE_SIZE = 100
# Comment pages read per video and poll; a school's video rarely gets 300 comments in one interval.
MAX_COMMENT_PAGES = 3
SEEN_LIMIT = 200
# YouTube's daily quota resets at midnight Pacific time.
QUOTA_ZONE = ZoneInfo("America/Los_Angeles")
# For per-minute limits, which say nothing about when they lift.
SHORT_WAIT = timedelta(minutes=1)
_QUOTA = {"quotaExceeded", "dailyLimitExceeded"}
_RATE = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
_AUTH = {"keyInvalid", "keyExpired", "API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED",
         "API_KEY_HTTP_REFERRER_BLOCKED", "API_KEY_IP_ADDRESS_BLOCKED", "accessNotConfigured",
         "SERVICE_DISABLED", "ipRefererBlocked", "forbidden", "UNAUTHENTICATED",
         "PERMISSION_DENIED"}
# A video with comments turned off, made private or deleted is skipped, not a failed source.
_VIDEO_GONE = {"commentsDisabled", "videoNotFound", "forbidden"}


class YouTubeConfig(BaseModel):
    """Options of a ``youtube`` source; the API key comes from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: EnvSecret
    base_url: str = "https://www.googleapis.com/youtube/v3"
    # Search for videos naming the school (search.list: 100 units a call).
    search: bool = True
    # Replaces the query built from the school's name and aliases ("a"|"b", -word to exclude).
    query: str | None = Field(None, min_length=1, max_length=500)
    # The school's own channel (UC...): comments on its newest uploads are read (1 unit a call).
    channel_id: str | None = Field(None, pattern=r"^UC[0-9A-Za-z_-]{22}$")
    comment_videos: int = Field(5, ge=1, le=50)
    # This source's share of the project's daily units; the runner counts against it.
    daily_quota_units: int = Field(DEFAULT_DAILY_UNITS, ge=1, le=1_000_000)
    max_search_pages: int = Field(1, ge=1, le=10)
    # Search results appear late: each poll searches back this far before the newest video seen.
    search_overlap_hours: int = Field(6, ge=0, le=72)
    first_poll_days: int = Field(7, ge=1, le=365)
    timeout: float = Field(20.0, gt=0, le=120)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @model_validator(mode="after")
    def _something_to_read(self) -> YouTubeConfig:
        if not self.search and not self.channel_id:
            raise ValueError("nothing to read: set search = true or a channel_id")
        return self


class _OutOfUnits(Exception):
    """The next call would spend more units than are left today."""


class _VideoGone(Exception):
    """The video's comments cannot be read (turned off, private or deleted)."""


class _Meter:
    """Counts the units one fetch spends against what is left today; says so once when out."""

    def __init__(self, left: int, source_id: str, daily: int) -> None:
        self.left, self.spent, self.stopped = left, 0, False
        self.source_id, self.daily = source_id, daily

    def take(self, resource: str) -> None:
        cost = UNIT_COST[resource]
        if self.spent + cost > self.left:
            if not self.stopped:
                log.warning("youtube source %s: stopping before %s.list (%d units): %d of this "
                            "source's %d daily units left; the rest waits for tomorrow's budget",
                            self.source_id, resource, cost, self.left - self.spent, self.daily)
            self.stopped = True
            raise _OutOfUnits
        self.spent += cost


class YouTubeConnector(Connector):
    """Searches YouTube for the school and reads new comments on its own uploads."""

    Config = YouTubeConfig
    config: YouTubeConfig

    def __init__(self, config: YouTubeConfig, school: SchoolContext, source_id: str) -> None:
        super().__init__(config, school, source_id)
        self.query = config.query or or_query(school.search_terms, "|")
        self.http = HttpClient(timeout=config.timeout)
        self.now: Callable[[], datetime] = utcnow

    def daily_budget(self) -> int:
        """Quota units this source may spend per day; the runner sets remaining_budget from it."""
        return self.config.daily_quota_units

    def fetch(self, cursor: str | None) -> Batch:
        """Comments first (cheap), then search; stop before the day's units run out."""
        left = self.remaining_budget
        meter = _Meter(self.config.daily_quota_units if left is None else left,
                       self.source_id, self.config.daily_quota_units)
        state = load_cursor_map(cursor, self.source_id)
        fetched_at = self.now()
        mentions: list[Mention] = []
        if self.config.channel_id:
            found, state["comments"] = self._channel_comments(state.get("comments"), meter)
            mentions += [_comment_mention(c, fetched_at) for c in found]
        if self.config.search and not meter.stopped:
            found, state["search"] = self._search(state.get("search"), meter)
            mentions += [_video_mention(v, fetched_at) for v in found]
        return Batch(mentions=mentions, next_cursor=dump_cursor_map(state), cost=meter.spent)

    def close(self) -> None:
        """Close the HTTP session."""
        self.http.close()

    # --- search -----------------------------------------------------------------------

    def _search(self, old: Any, meter: _Meter) -> tuple[list[dict[str, Any]], Any]:
        """Videos published since the last poll, newest first, with page-token resumption."""
        old = old if isinstance(old, dict) else {}
        seen = [s for s in old.get("seen") or [] if isinstance(s, str)]
        newest = parse_time(old.get("newest"))
        resume = old.get("resume") if isinstance(old.get("resume"), dict) else None
        if resume:
            after, token = parse_time(resume.get("after")), resume.get("page_token")
        elif newest:
            after, token = newest - timedelta(hours=self.config.search_overlap_hours), None
        else:
            after, token = self.now() - timedelta(days=self.config.first_poll_days), None
        after = after or self.now() - timedelta(days=self.config.first_poll_days)
        first_poll = newest is None and resume is None
        pages = 1 if first_poll else self.config.max_search_pages
        known, videos, read, done = set(seen), [], 0, False
        while read < pages:
            params = {"part": "snippet", "q": self.query, "type": "video", "order": "date",
                      "maxResults": SEARCH_PAGE_SIZE, "publishedAfter": rfc3339(after),
                      # The default (moderate) hides exactly the videos a DSL may need to see.
                      "safeSearch": "none"}
            if token:
                params["pageToken"] = token
            try:
                body = self._call("search", params, meter)
            except _OutOfUnits:
                break
            read += 1
            items = [i for i in _items(body)
                     if _video_id(i) and isinstance(i.get("snippet"), dict)]
            for item in items:
                if _video_id(item) not in known:
                    known.add(_video_id(item))
                    videos.append(item)
            token = body.get("nextPageToken") if isinstance(body.get("nextPageToken"), str) else None
            if not token or not items:
                done = True
                break
        if read == 0:
            return [], old or None
        times = [t for t in (parse_time(v["snippet"].get("publishedAt")) for v in videos) if t]
        latest = max(times + ([newest] if newest else []), default=None)
        return videos, {
            "newest": rfc3339(latest) if latest else None,
            "seen": remember([_video_id(v) for v in videos], seen, SEEN_LIMIT),
            "resume": None if done or first_poll else {"after": rfc3339(after), "page_token": token},
        }

    # --- comments on the school's channel -----------------------------------------------

    def _channel_comments(self, old: Any, meter: _Meter) -> tuple[list[dict[str, Any]], Any]:
        """New top-level comments on the channel's newest uploads."""
        old = old if isinstance(old, dict) else {}
        # The uploads id is kept with the channel it belongs to, in case channel_id changes.
        same = old.get("channel") == self.config.channel_id
        uploads = old.get("uploads") if same and isinstance(old.get("uploads"), str) else None
        old_videos = old.get("videos") if same and isinstance(old.get("videos"), dict) else {}
        channel = {"channel": self.config.channel_id}
        try:
            uploads = uploads or self._uploads_playlist(meter)
            body = self._call("playlistItems", {"part": "snippet,contentDetails",
                                                "playlistId": uploads,
                                                "maxResults": self.config.comment_videos},
                              meter, skip={"playlistNotFound"})
        except _OutOfUnits:
            return [], ({**channel, "uploads": uploads, "videos": old_videos} if uploads
                        else old or None)
        except _VideoGone:
            # An empty uploads playlist is reported as not found: a channel with no videos yet.
            return [], {**channel, "uploads": uploads, "videos": {}}
        videos: dict[str, Any] = {}
        found: list[dict[str, Any]] = []
        for item in _items(body)[: self.config.comment_videos]:
            details = item.get("contentDetails") or {}
            video_id = details.get("videoId")
            if not isinstance(video_id, str):
                continue
            title = clean_text(html.unescape((item.get("snippet") or {}).get("title") or ""))
            previous = old_videos.get(video_id)
            if meter.stopped:
                if previous is not None:
                    videos[video_id] = previous
                continue
            comments, video_state = self._video_comments(video_id, previous, meter)
            if video_state is not None:
                videos[video_id] = video_state
            found += [{**c, "_video_title": title} for c in comments]
        return found, {**channel, "uploads": uploads, "videos": videos}

    def _uploads_playlist(self, meter: _Meter) -> str:
        """The id of the channel's uploads playlist (looked up once, then kept in the cursor)."""
        body = self._call("channels", {"part": "contentDetails", "id": self.config.channel_id},
                          meter)
        for item in _items(body):
            uploads = ((item.get("contentDetails") or {}).get("relatedPlaylists") or {}).get("uploads")
            if isinstance(uploads, str) and uploads:
                return uploads
        raise NotConfigured(f"YouTube has no channel {self.config.channel_id}; check channel_id")

    def _video_comments(self, video_id: str, old: Any,
                        meter: _Meter) -> tuple[list[dict[str, Any]], Any]:
        """Comment threads on one video newer than its last poll, and the video's new state."""
        old = old if isinstance(old, dict) else {}
        seen = [s for s in old.get("seen") or [] if isinstance(s, str)]
        newest = parse_time(old.get("newest"))
        pages = 1 if newest is None else MAX_COMMENT_PAGES
        known, threads, token, read = set(seen), [], None, 0
        while read < pages:
            params = {"part": "snippet", "videoId": video_id, "order": "time",
                      "maxResults": COMMENT_PAGE_SIZE, "textFormat": "plainText"}
            if token:
                params["pageToken"] = token
            try:
                body = self._call("commentThreads", params, meter, skip=_VIDEO_GONE)
            except _OutOfUnits:
                break
            except _VideoGone as gone:
                log.info("youtube source %s: skipping comments of video %s (%s)",
                         self.source_id, video_id, gone)
                return [], old or None
            read += 1
            reached_old = False
            for thread in _items(body):
                published = parse_time(_top_comment(thread).get("publishedAt"))
                # Skip rather than stop: "time" order may follow reply activity, not posting.
                if newest and published and published < newest:
                    reached_old = True
                    continue
                if isinstance(thread.get("id"), str) and thread["id"] not in known:
                    known.add(thread["id"])
                    threads.append({**thread, "_video_id": video_id})
            token = body.get("nextPageToken") if isinstance(body.get("nextPageToken"), str) else None
            if reached_old or not token:
                break
        if read == 0:
            return [], old or None
        if token and not reached_old and newest is not None and read == pages:
            log.warning("youtube source %s: more than %d pages of new comments on video %s; "
                        "older new ones are skipped", self.source_id, pages, video_id)
        times = [t for t in (parse_time(_top_comment(c).get("publishedAt")) for c in threads) if t]
        latest = max(times + ([newest] if newest else []), default=None)
        return threads, {"newest": rfc3339(latest) if latest else None,
                         "seen": remember([c["id"] for c in threads], seen, SEEN_LIMIT)}

    # --- HTTP -----------------------------------------------------------------------------

    def _call(self, resource: str, params: dict[str, Any], meter: _Meter,
              skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        """One API call, counted in units; errors become RateLimited, AuthFailed or skips."""
        meter.take(resource)
        response = self.http.get(
            f"{self.config.base_url}/{resource}", params=params,
            # The key goes in a header so that it never appears in a URL or a log line.
            headers={"X-Goog-Api-Key": self.config.api_key.get_secret_value()},
            ok=(200, 400, 401, 403, 404),
        )
        if response.status == 200:
            return json_object(response)
        raise self._error(resource, response, skip)

    def _error(self, resource: str, response: HttpResponse,
               skip: frozenset[str] | set[str]) -> Exception:
        reasons = _error_reasons(response)
        named = ", ".join(sorted(reasons)) or "no reason given"
        if reasons & _QUOTA:
            retry_at = next_quota_reset(self.now())
            return RateLimited(f"YouTube quota exceeded ({named}); it resets at midnight Pacific "
                               f"time, {retry_at:%Y-%m-%d %H:%M} UTC", retry_at=retry_at)
        if reasons & _RATE:
            return RateLimited(f"YouTube rate limit ({named})", retry_at=self.now() + SHORT_WAIT)
        if reasons & skip:
            return _VideoGone(named)
        if reasons & _AUTH or response.status in (401, 403):
            return AuthFailed(f"YouTube refused the API key for {resource}.list "
                              f"({response.status}: {named}); check the key, its restrictions "
                              "and that the YouTube Data API v3 is enabled for its project")
        if response.status == 404:
            return NotConfigured(f"YouTube found nothing for {resource}.list ({named}); "
                                 "check channel_id")
        return TransientError(f"YouTube rejected {resource}.list ({response.status}: {named})")


def next_quota_reset(now: datetime) -> datetime:
    """The next midnight in Pacific time, when YouTube's daily quota resets, in UTC."""
    local = now.astimezone(QUOTA_ZONE)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=QUOTA_ZONE)
    return midnight.astimezone(UTC)


def _error_reasons(response: HttpResponse) -> set[str]:
    """The reasons in a Google error body: errors[].reason, details[].reason and status."""
    try:
        error = json.loads(response.body).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return set()
    if not isinstance(error, dict):
        return set()
    found = [e.get("reason") for e in error.get("errors") or [] if isinstance(e, dict)]
    found += [d.get("reason") for d in error.get("details") or [] if isinstance(d, dict)]
    found.append(error.get("status"))
    return {r for r in found if isinstance(r, str) and r}


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise TransientError("YouTube sent a reply whose items is not a list")
    return [i for i in items if isinstance(i, dict)]


def _video_id(item: dict[str, Any]) -> str | None:
    ident = item.get("id")
    video_id = ident.get("videoId") if isinstance(ident, dict) else None
    return video_id if isinstance(video_id, str) and video_id else None


def _top_comment(thread: dict[str, Any]) -> dict[str, Any]:
    top = (thread.get("snippet") or {}).get("topLevelComment") or {}
    snippet = top.get("snippet") if isinstance(top, dict) else None
    return snippet if isinstance(snippet, dict) else {}


def _video_mention(item: dict[str, Any], fetched_at: datetime) -> Mention:
    snippet = item["snippet"]
    video_id = _video_id(item)
    # search.list returns titles and descriptions HTML-escaped (&#39;, &amp;).
    title = clean_text(html.unescape(snippet.get("title") or ""))
    description = clean_text(html.unescape(snippet.get("description") or ""))
    return Mention(
        platform="youtube",
        # Same id form as YouTube's channel feeds, so the rss connector's entries match.
        external_id=f"yt:video:{video_id}",
        url=f"{WATCH_URL}?v={video_id}",
        author=snippet.get("channelTitle") or None,
        title=title or None,
        text=f"{title}\n\n{description}" if description else title,
        published_at=parse_time(snippet.get("publishedAt")) or fetched_at,
        fetched_at=fetched_at,
        raw=item,
    )


def _comment_mention(thread: dict[str, Any], fetched_at: datetime) -> Mention:
    comment = _top_comment(thread)
    video_id = thread["_video_id"]
    raw = {k: v for k, v in thread.items() if not k.startswith("_")}
    return Mention(
        platform="youtube",
        external_id=f"yt:comment:{thread['id']}",
        url=f"{WATCH_URL}?v={video_id}&lc={thread['id']}",
        author=comment.get("authorDisplayName") or None,
        title=thread.get("_video_title") or None,
        text=clean_text(comment.get("textDisplay") or comment.get("textOriginal") or ""),
        published_at=parse_time(comment.get("publishedAt")) or fetched_at,
        fetched_at=fetched_at,
        raw=raw,
    )
