"""The youtube connector against a real local HTTP server serving recorded Data API v3 replies."""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import AuthFailed, NotConfigured, RateLimited, SchoolContext, TransientError
from connectors.youtube import YouTubeConfig, YouTubeConnector, next_quota_reset
from tests.support.http_server import Reply, Request

SCHOOL = SchoolContext(id="hhs", name="Harrowgate High School",
                       aliases=("Harrowgate High", "HHS"))
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
API = "/youtube/v3"
CHANNEL = "UCq3hX1wCz8c0bPYx9Vf0aKQ"
KEY = "AIzaSyD-test-key-for-harrowgate-000000"
CONCERT, OPEN_EVENING = "Kp7vQ2mX9aE", "r4TzW8nLc1o"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    """The API key, as the environment would hold it."""
    monkeypatch.setenv("YOUTUBE_API_KEY", KEY)


def make(server, **options) -> YouTubeConnector:
    config = YouTubeConfig.model_validate(
        {"api_key": {"env": "YOUTUBE_API_KEY"}, "base_url": server.url + API, **options})
    connector = YouTubeConnector(config, SCHOOL, "youtube-hhs")
    connector.now = lambda: NOW
    return connector


def fixture(name: str, **kwargs) -> Reply:
    return Reply.file(f"youtube/{name}.json", **kwargs)


def comments_by_video(concert: str = "comment_threads_first"):
    """commentThreads replies chosen by the videoId asked for, as YouTube would."""
    def handler(request: Request) -> Reply:
        video = request.query["videoId"][0]
        if video == CONCERT:
            return fixture(concert)
        return fixture("comments_disabled", status=403)
    return handler


def channel_routes(server, concert: str = "comment_threads_first") -> None:
    server.route(f"{API}/channels", fixture("channels"))
    server.route(f"{API}/playlistItems", fixture("playlist_items"))
    server.route(f"{API}/commentThreads", comments_by_video(concert))


def test_first_search_returns_newest_page_of_videos(http_server):
    http_server.route(f"{API}/search", fixture("search_page1"), fixture("search_page2"))
    batch = make(http_server, search=True).fetch(None)

    assert [m.external_id for m in batch.mentions] == ["yt:video:bX2k9QwE7rT", "yt:video:Zt5pL0aM3vQ"]
    video = batch.mentions[0]
    assert video.platform == "youtube"
    assert video.url == "https://www.youtube.com/watch?v=bX2k9QwE7rT"
    assert video.title == "Harrowgate High School 'lockdown drill' - what actually happened"
    assert "Here's what we know" in video.text
    assert video.author == "HX Local Talk"
    assert video.published_at == datetime(2026, 3, 2, 12, 41, 9, tzinfo=UTC)
    assert batch.cost == 100

    [request] = http_server.requests_to(f"{API}/search")  # a first poll reads one page only
    assert request.query["q"] == ['"Harrowgate High School"|"Harrowgate High"|"HHS"']
    assert request.query["type"] == ["video"]
    assert request.query["order"] == ["date"]
    assert request.query["safeSearch"] == ["none"]
    assert request.query["publishedAfter"] == ["2026-02-23T15:00:00Z"]
    assert "pageToken" not in request.query
    assert request.headers["X-Goog-Api-Key"] == KEY
    assert "key" not in request.query


def test_incremental_search_asks_from_the_newest_video_and_skips_seen(http_server):
    http_server.route(f"{API}/search", fixture("search_page1"), fixture("search_incremental"))
    connector = make(http_server)
    cursor = connector.fetch(None).next_cursor
    batch = connector.fetch(cursor)

    assert [m.external_id for m in batch.mentions] == ["yt:video:Hq3sV7nB2xK"]
    assert batch.mentions[0].text == "Fight at Harrowgate High bus stop (filmed by a pupil)"
    second = http_server.requests_to(f"{API}/search")[1]
    # The newest video seen (12:41:09) less the six-hour overlap for late-indexed videos.
    assert second.query["publishedAfter"] == ["2026-03-02T06:41:09Z"]


SINCE_FEB_26 = json.dumps({"search": {"newest": "2026-02-26T00:00:00Z", "seen": [], "resume": None}})


def test_second_page_is_read_with_page_token(http_server):
    http_server.route(f"{API}/search", fixture("search_page1"), fixture("search_page2"))
    batch = make(http_server, max_search_pages=2).fetch(SINCE_FEB_26)

    assert [m.external_id for m in batch.mentions] == [
        "yt:video:bX2k9QwE7rT", "yt:video:Zt5pL0aM3vQ", "yt:video:c8YhN1wUe4D"]
    assert batch.mentions[2].title == "Harrowgate High & the new sports hall: council meeting clip"
    first, second = http_server.requests_to(f"{API}/search")
    assert second.query["pageToken"] == ["CDIQAA"]
    assert second.query["publishedAfter"] == first.query["publishedAfter"] == ["2026-02-25T18:00:00Z"]
    assert batch.cost == 200


def test_pages_beyond_the_limit_resume_next_poll(http_server):
    http_server.route(f"{API}/search", fixture("search_page1"), fixture("search_page2"))
    connector = make(http_server, max_search_pages=1)
    batch = connector.fetch(SINCE_FEB_26)
    assert len(batch.mentions) == 2
    resumed = connector.fetch(batch.next_cursor)

    assert [m.external_id for m in resumed.mentions] == ["yt:video:c8YhN1wUe4D"]
    second = http_server.requests_to(f"{API}/search")[1]
    assert second.query["pageToken"] == ["CDIQAA"]
    assert second.query["publishedAfter"] == ["2026-02-25T18:00:00Z"]
    state = json.loads(resumed.next_cursor)["search"]
    assert state["resume"] is None and state["newest"] == "2026-03-02T12:41:09Z"


def test_empty_search_page(http_server):
    http_server.route(f"{API}/search", fixture("search_empty"))
    connector = make(http_server)
    batch = connector.fetch(None)
    assert batch.mentions == [] and batch.cost == 100
    assert connector.fetch(batch.next_cursor).mentions == []


def test_channel_comments_first_poll(http_server):
    channel_routes(http_server)
    batch = make(http_server, search=False, channel_id=CHANNEL).fetch(None)

    assert [m.external_id for m in batch.mentions] == [
        "yt:comment:Ugx9LrTf6vBk3qMa7wE4AaABAg", "yt:comment:UgzH2mYt8cWq5eNp0sJ4AaABAg",
        "yt:comment:UgwQ7dKp3nXbR1vL2aZ4AaABAg"]
    comment = batch.mentions[0]
    assert comment.url == f"https://www.youtube.com/watch?v={CONCERT}&lc=Ugx9LrTf6vBk3qMa7wE4AaABAg"
    assert comment.text == ("the boy on the drums gets battered every day at break and nobody "
                            "does anything")
    assert comment.author == "@anon-98231"
    assert comment.title == "Spring Concert 2026 highlights"
    # channels.list 1 + playlistItems.list 1 + commentThreads.list 1 for each of two videos.
    assert batch.cost == 4
    [playlist] = http_server.requests_to(f"{API}/playlistItems")
    assert playlist.query["playlistId"] == ["UUq3hX1wCz8c0bPYx9Vf0aKQ"]
    threads = http_server.requests_to(f"{API}/commentThreads")
    assert [r.query["videoId"] for r in threads] == [[CONCERT], [OPEN_EVENING]]
    assert threads[0].query["order"] == ["time"]
    assert threads[0].query["textFormat"] == ["plainText"]


def test_channel_comments_incremental_returns_only_new_comments(http_server):
    channel_routes(http_server)
    connector = make(http_server, search=False, channel_id=CHANNEL)
    cursor = connector.fetch(None).next_cursor
    http_server.route(f"{API}/commentThreads", comments_by_video("comment_threads_new"))
    batch = connector.fetch(cursor)

    assert [m.external_id for m in batch.mentions] == ["yt:comment:UgyN4pRz2hVc8kXe1tQ4AaABAg"]
    assert len(http_server.requests_to(f"{API}/channels")) == 1  # the uploads id is kept
    assert batch.cost == 3


def test_units_are_counted_per_call(http_server):
    channel_routes(http_server)
    http_server.route(f"{API}/search", fixture("search_page1"))
    connector = make(http_server, channel_id=CHANNEL, daily_quota_units=2000)
    assert connector.daily_budget() == 2000
    connector.remaining_budget = 2000
    batch = connector.fetch(None)
    assert batch.cost == 4 + 100
    assert len(batch.mentions) == 5


def test_search_is_skipped_when_the_budget_cannot_pay_for_it(http_server, caplog):
    channel_routes(http_server)
    http_server.route(f"{API}/search", fixture("search_page1"))
    connector = make(http_server, channel_id=CHANNEL)
    connector.remaining_budget = 50
    with caplog.at_level(logging.WARNING, logger="connectors.youtube"):
        batch = connector.fetch(None)

    assert batch.cost == 4
    assert len(batch.mentions) == 3
    assert http_server.requests_to(f"{API}/search") == []
    lines = [r for r in caplog.records if "stopping before" in r.getMessage()]
    assert len(lines) == 1
    assert "search.list (100 units)" in lines[0].getMessage()
    assert "46 of this source's 10000 daily units left" in lines[0].getMessage()


def test_budget_stops_mid_channel_and_keeps_progress(http_server, caplog):
    channel_routes(http_server)
    http_server.route(f"{API}/search", fixture("search_page1"))
    connector = make(http_server, channel_id=CHANNEL)
    connector.remaining_budget = 3
    with caplog.at_level(logging.WARNING, logger="connectors.youtube"):
        batch = connector.fetch(None)

    assert batch.cost == 3
    assert len(batch.mentions) == 3
    assert len(http_server.requests_to(f"{API}/commentThreads")) == 1
    assert sum("stopping before" in r.getMessage() for r in caplog.records) == 1
    state = json.loads(batch.next_cursor)
    assert list(state["comments"]["videos"]) == [CONCERT]


def test_spent_budget_makes_no_calls(http_server):
    channel_routes(http_server)
    connector = make(http_server, channel_id=CHANNEL)
    connector.remaining_budget = 0
    batch = connector.fetch(None)
    assert batch.mentions == [] and batch.cost == 0
    assert http_server.requests == []


def test_quota_exceeded_waits_for_midnight_pacific(http_server):
    http_server.route(f"{API}/search", fixture("quota_exceeded", status=403))
    with pytest.raises(RateLimited) as caught:
        make(http_server).fetch(None)
    # 15:00 UTC on 2 March 2026 is 07:00 PST; the next Pacific midnight is 08:00 UTC on 3 March.
    assert caught.value.retry_at == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


def test_quota_reset_follows_daylight_saving():
    summer = datetime(2026, 7, 1, 6, 59, tzinfo=UTC)  # 23:59 PDT on 30 June
    assert next_quota_reset(summer) == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)


def test_429_is_rate_limited_with_retry_after(http_server):
    http_server.route(f"{API}/search", Reply(status=429, body=b"{}", headers={"Retry-After": "120"}))
    before = datetime.now(UTC)
    with pytest.raises(RateLimited) as caught:
        make(http_server).fetch(None)
    after = datetime.now(UTC)
    assert before + timedelta(seconds=120) <= caught.value.retry_at <= after + timedelta(seconds=120)


@pytest.mark.parametrize("name,status", [
    ("key_invalid", 400), ("key_invalid_legacy", 400), ("access_not_configured", 403)])
def test_refused_key_is_auth_failed(http_server, name, status):
    http_server.route(f"{API}/search", fixture(name, status=status))
    with pytest.raises(AuthFailed) as caught:
        make(http_server).fetch(None)
    assert KEY not in str(caught.value)


def test_401_is_auth_failed(http_server):
    http_server.route(f"{API}/search", Reply(status=401, body=b'{"error": {"code": 401}}'))
    with pytest.raises(AuthFailed):
        make(http_server).fetch(None)


def test_500_is_transient(http_server):
    http_server.route(f"{API}/search", fixture("backend_error", status=500))
    with pytest.raises(TransientError) as caught:
        make(http_server).fetch(None)
    assert not isinstance(caught.value, RateLimited)


def test_malformed_json_is_transient(http_server):
    http_server.route(f"{API}/search", fixture("malformed"))
    with pytest.raises(TransientError):
        make(http_server).fetch(None)


def test_unknown_channel_is_not_configured(http_server):
    http_server.route(f"{API}/channels", fixture("channels_empty"))
    with pytest.raises(NotConfigured, match=CHANNEL):
        make(http_server, search=False, channel_id=CHANNEL).fetch(None)


def test_config_validation():
    base = {"api_key": {"env": "YOUTUBE_API_KEY"}}
    with pytest.raises(ValueError, match="nothing to read"):
        YouTubeConfig.model_validate({**base, "search": False})
    with pytest.raises(ValueError):
        YouTubeConfig.model_validate({**base, "channel_id": "HarrowgateHigh"})
    with pytest.raises(ValueError, match="environment"):
        YouTubeConfig.model_validate({"api_key": KEY})
