"""The rss connector against a real local HTTP server."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from connectors.base import NotConfigured, SchoolContext, TransientError
from connectors.rss import RssConfig, RssConnector, unwrap_google_redirect
from tests.support.http_server import FIXTURES, Reply

SCHOOL = SchoolContext(id="harrowgate", name="Harrowgate High School")


def connector(**options) -> RssConnector:
    return RssConnector(RssConfig(**options), SCHOOL, "test")


def test_conditional_get_second_fetch_is_a_304(http_server):
    http_server.route("/feed.xml", Reply.file("rss/news.xml", etag='"v1"',
                                              content_type="application/rss+xml",
                                              headers={"Last-Modified": "Mon, 16 Nov 2026 08:00:00 GMT"}))
    rss = connector(url=f"{http_server.url}/feed.xml")
    first = rss.fetch(None)
    assert [m.external_id for m in first.mentions] == ["chess-1", "empty-1"]
    assert json.loads(first.next_cursor) == {"etag": '"v1"', "modified": "Mon, 16 Nov 2026 08:00:00 GMT"}
    second = rss.fetch(first.next_cursor)
    assert second.mentions == [] and second.next_cursor == first.next_cursor
    sent = http_server.requests_to("/feed.xml")[1].headers
    assert sent["If-None-Match"] == '"v1"'
    assert sent["If-Modified-Since"] == "Mon, 16 Nov 2026 08:00:00 GMT"
    assert sent["User-Agent"].startswith("Schoolwatch/")


def test_html_is_stripped_and_scripts_dropped(http_server):
    http_server.route("/feed.xml", Reply.file("rss/news.xml"))
    chess = connector(url=f"{http_server.url}/feed.xml").fetch(None).mentions[0]
    assert chess.title == "Harrowgate High wins regional chess title"
    assert chess.text == "Pupils from Harrowgate High beat eight schools."
    assert chess.published_at == datetime(2026, 11, 16, 7, 30, tzinfo=UTC)
    assert chess.raw["id"] == "chess-1"
    json.dumps(chess.raw)  # stored as JSON evidence


def test_google_alerts_links_are_unwrapped_and_titles_cleaned(http_server):
    http_server.route("/alert", Reply.file("rss/google-alert.xml", content_type="application/atom+xml"))
    mentions = connector(url=f"{http_server.url}/alert").fetch(None).mentions
    assert mentions[0].platform == "google_alerts"
    assert mentions[0].url == "https://gazette.example.co.uk/education/harrowgate-high-exam-leak?utm_source=google"
    assert mentions[0].title == "Parents' anger as Harrowgate High confirms exam papers leaked"
    assert "<b>" not in mentions[1].text


def test_unwrap_leaves_other_urls_alone():
    assert unwrap_google_redirect("https://example.com/url?url=x") == "https://example.com/url?url=x"


def test_malformed_feed_is_a_transient_error(http_server):
    http_server.route("/bad", Reply.file("rss/malformed.xml"))
    with pytest.raises(TransientError, match="malformed feed"):
        connector(url=f"{http_server.url}/bad").fetch(None)


def test_server_error_is_transient(http_server):
    http_server.route("/down", Reply(status=500, body="oops"))
    with pytest.raises(TransientError, match="server error 500"):
        connector(url=f"{http_server.url}/down").fetch(None)


def test_oversized_body_is_refused(http_server):
    http_server.route("/huge", Reply(body=b"<rss>" + b" " * 200_000 + b"</rss>", gzip=True))
    with pytest.raises(TransientError, match="cap"):
        connector(url=f"{http_server.url}/huge", max_bytes=100_000).fetch(None)


def test_redirect_loop_is_transient(http_server):
    http_server.route("/loop", Reply(status=302, headers={"Location": "/loop"}))
    with pytest.raises(TransientError, match="too many redirects"):
        connector(url=f"{http_server.url}/loop").fetch(None)


def test_local_file_relative_to_config_dir():
    config = RssConfig.model_validate({"path": "rss/news.xml"}, context={"base_dir": FIXTURES})
    assert len(RssConnector(config, SCHOOL, "t").fetch(None).mentions) == 2


def test_missing_file_is_not_configured(tmp_path):
    with pytest.raises(NotConfigured, match="does not exist"):
        connector(path=tmp_path / "nope.xml").fetch(None)


def test_exactly_one_of_url_or_path():
    with pytest.raises(ValueError, match="exactly one"):
        RssConfig()
