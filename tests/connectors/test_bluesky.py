"""The Bluesky connector against a real local server standing in for the PDS."""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from connectors.base import AuthFailed, NotConfigured, RateLimited, TransientError
from connectors.bluesky import BlueskyConfig, BlueskyConnector, default_queries
from tests.support.http_server import Reply, Request

LOGIN = "/xrpc/com.atproto.server.createSession"
REFRESH = "/xrpc/com.atproto.server.refreshSession"
SEARCH = "/xrpc/app.bsky.feed.searchPosts"
PASSWORD = "abcd-efgh-ijkl-mnop"
QUERY = '"Harrowgate High School"'
CLAIRE = "at://did:plc:3nq6r7bkz2vyh5xj4ta8wdle/app.bsky.feed.post"
NEWEST_FIRST_POLL = {"indexedAt": "2026-11-14T10:21:08.145Z", "uri": f"{CLAIRE}/3mfx2kq7bvc2a"}
OLDEST = {"indexedAt": "2026-11-14T07:30:01.210Z",
          "uri": "at://did:plc:wz4h6b2nqk3tjx7mvr5ycs1p/app.bsky.feed.post/3mfwl2mxh6s2c"}


@pytest.fixture
def connector(http_server, school, monkeypatch):
    """A bluesky source logging in to the local server."""
    monkeypatch.setenv("SW_TEST_BSKY_PASSWORD", PASSWORD)
    http_server.route(LOGIN, Reply.file("bluesky/create_session.json"), method="POST")
    http_server.route(REFRESH, Reply.file("bluesky/refresh_session.json"), method="POST")
    made: list[BlueskyConnector] = []

    def make(**options) -> BlueskyConnector:
        config = BlueskyConfig.model_validate({
            "base_url": http_server.url, "handle": "schoolwatch-harrowgate.bsky.social",
            "app_password": {"env": "SW_TEST_BSKY_PASSWORD"}, "queries": [QUERY], **options})
        made.append(BlueskyConnector(config, school, "bluesky-harrowgate"))
        return made[-1]

    yield make
    for source in made:
        source.close()


def cursor(last: dict[str, str]) -> str:
    """A source cursor that has seen ``last`` for QUERY."""
    return json.dumps({QUERY: last})


def one(request: Request, name: str) -> str | None:
    """A single query parameter of a recorded request."""
    values = request.query.get(name)
    return values[0] if values else None


def bearer(request: Request) -> str:
    """The token a request carried."""
    return request.headers["Authorization"].removeprefix("Bearer ")


def test_first_poll_logs_in_and_reads_one_page(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/search_page1.json"),
                      Reply.file("bluesky/search_page2.json"))
    batch = connector(page_size=2).fetch(None)

    (login,) = http_server.requests_to(LOGIN)
    assert json.loads(login.body) == {"identifier": "schoolwatch-harrowgate.bsky.social",
                                      "password": PASSWORD}
    (search,) = http_server.requests_to(SEARCH)
    assert bearer(search).endswith("FAKE-access-1-signature")
    assert one(search, "q") == QUERY
    assert one(search, "sort") == "latest"
    assert one(search, "limit") == "2"
    assert one(search, "cursor") is None
    first, second = batch.mentions
    assert first.platform == "bluesky"
    assert first.external_id == NEWEST_FIRST_POLL["uri"]
    assert first.url == "https://bsky.app/profile/clairemorgan.bsky.social/post/3mfx2kq7bvc2a"
    assert first.author == "clairemorgan.bsky.social"
    assert first.published_at == datetime(2026, 11, 14, 10, 21, 7, 331000, tzinfo=UTC)
    assert second.author == "harrowgategazette.co.uk"
    assert json.loads(batch.next_cursor) == {QUERY: NEWEST_FIRST_POLL}


def test_incremental_poll_stops_at_the_newest_post_seen(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/search_new.json"),
                      Reply.file("bluesky/search_page2.json"))
    batch = connector().fetch(cursor(NEWEST_FIRST_POLL))
    assert len(http_server.requests_to(SEARCH)) == 1  # the seen post was on page one
    (mention,) = batch.mentions
    assert mention.text.startswith("Update on Harrowgate High School")
    assert json.loads(batch.next_cursor)[QUERY]["uri"].endswith("/3mfyb6kd7qs2n")


def test_second_page_follows_the_search_cursor(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/search_page1.json"),
                      Reply.file("bluesky/search_page2.json"))
    batch = connector(page_size=2).fetch(cursor(OLDEST))

    first, second = http_server.requests_to(SEARCH)
    assert one(first, "cursor") is None
    assert one(second, "cursor") == "2"
    assert len(batch.mentions) == 3
    no_handle = batch.mentions[2]
    # An account whose handle does not verify links by DID.
    assert no_handle.url == ("https://bsky.app/profile/did:plc:kq3m7zr2xv4wlb6ncy5tdh8a"
                             "/post/3mfwq7hbt3k2x")
    assert json.loads(batch.next_cursor) == {QUERY: NEWEST_FIRST_POLL}


def test_empty_page_keeps_the_cursor(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/search_empty.json"))
    batch = connector().fetch(cursor(NEWEST_FIRST_POLL))
    assert batch.mentions == []
    assert json.loads(batch.next_cursor) == {QUERY: NEWEST_FIRST_POLL}


def test_session_is_kept_between_fetches(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/search_empty.json"))
    source = connector()
    source.fetch(None)
    source.fetch(None)
    assert len(http_server.requests_to(LOGIN)) == 1
    assert len(http_server.requests_to(SEARCH)) == 2


def test_expired_access_token_is_refreshed(http_server, connector, caplog):
    http_server.route(SEARCH, Reply.file("bluesky/error_expired_token.json", status=400),
                      Reply.file("bluesky/search_page1.json"))
    with caplog.at_level(logging.DEBUG):
        batch = connector().fetch(None)

    (refresh,) = http_server.requests_to(REFRESH)
    assert bearer(refresh).endswith("FAKE-refresh-1-signature")
    expired, retried = http_server.requests_to(SEARCH)
    assert bearer(expired).endswith("FAKE-access-1-signature")
    assert bearer(retried).endswith("FAKE-access-2-signature")
    assert len(http_server.requests_to(LOGIN)) == 1
    assert len(batch.mentions) == 2
    assert "FAKE-" not in caplog.text and PASSWORD not in caplog.text


def test_401_also_refreshes(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/error_auth_required.json", status=401),
                      Reply.file("bluesky/search_empty.json"))
    connector().fetch(None)
    assert len(http_server.requests_to(REFRESH)) == 1


def test_refused_refresh_token_logs_in_again(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/error_expired_token.json", status=400),
                      Reply.file("bluesky/search_empty.json"))
    http_server.route(REFRESH, Reply.file("bluesky/error_invalid_token.json", status=400),
                      method="POST")
    connector().fetch(None)
    assert len(http_server.requests_to(LOGIN)) == 2
    assert bearer(http_server.requests_to(SEARCH)[1]).endswith("FAKE-access-1-signature")


def test_still_refused_after_refresh_is_auth_failed(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/error_auth_required.json", status=401))
    with pytest.raises(AuthFailed):
        connector().fetch(None)


def test_refused_login_is_auth_failed(http_server, connector):
    http_server.route(LOGIN, Reply.file("bluesky/error_auth_required.json", status=401),
                      method="POST")
    with pytest.raises(AuthFailed, match="Invalid identifier or password") as caught:
        connector().fetch(None)
    assert PASSWORD not in str(caught.value)
    assert http_server.requests_to(SEARCH) == []


def test_403_is_auth_failed(http_server, connector):
    http_server.route(SEARCH, Reply(status=403, body='{"error": "Forbidden"}'))
    with pytest.raises(AuthFailed):
        connector().fetch(None)


def test_429_carries_the_reset_time(http_server, connector):
    http_server.route(SEARCH, Reply.file(
        "bluesky/error_rate_limit.json", status=429,
        headers={"ratelimit-limit": "3000", "ratelimit-remaining": "0",
                 "ratelimit-reset": "1794652500", "ratelimit-policy": "3000;w=300"}))
    with pytest.raises(RateLimited) as caught:
        connector().fetch(None)
    assert caught.value.retry_at == datetime.fromtimestamp(1794652500, UTC)


def test_rate_limited_login_is_rate_limited(http_server, connector):
    http_server.route(LOGIN, Reply.file("bluesky/error_rate_limit.json", status=429,
                                        headers={"ratelimit-reset": "1794652500"}),
                      method="POST")
    with pytest.raises(RateLimited):
        connector().fetch(None)


def test_server_error_is_transient(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/error_500.json", status=500))
    with pytest.raises(TransientError) as caught:
        connector().fetch(None)
    assert not isinstance(caught.value, RateLimited)


def test_malformed_json_is_transient(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/search_truncated.txt"))
    with pytest.raises(TransientError, match="malformed JSON"):
        connector().fetch(None)


def test_reply_without_posts_is_transient(http_server, connector):
    http_server.route(SEARCH, Reply(body='{"cursor": "5"}'))
    with pytest.raises(TransientError):
        connector().fetch(None)


def test_rejected_query_is_a_config_problem(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/error_bad_query.json", status=400))
    with pytest.raises(NotConfigured, match="BadQueryString"):
        connector().fetch(None)


def test_each_query_keeps_its_own_cursor(http_server, connector):
    http_server.route(SEARCH, Reply.file("bluesky/search_page1.json"),
                      Reply.file("bluesky/search_empty.json"))
    batch = connector(queries=[QUERY, '"HHS"']).fetch(None)
    assert [one(r, "q") for r in http_server.requests_to(SEARCH)] == [QUERY, '"HHS"']
    assert json.loads(batch.next_cursor) == {QUERY: NEWEST_FIRST_POLL}


def test_default_queries_are_phrases_and_handle_mentions(school):
    school = school.model_copy(update={"handles": ("@HarrowgateHigh",
                                                   "@harrowgatehigh.bsky.social")})
    assert default_queries(school) == ['"Harrowgate High School"', '"Harrowgate High"', '"HHS"',
                                       "mentions:harrowgatehigh.bsky.social"]


def test_config_validates(monkeypatch):
    monkeypatch.setenv("SW_TEST_BSKY_PASSWORD", PASSWORD)
    with pytest.raises(ValidationError):
        BlueskyConfig.model_validate({"handle": "a.bsky.social", "app_password": PASSWORD})
    with pytest.raises(ValidationError):
        BlueskyConfig.model_validate({"handle": "a.bsky.social",
                                      "app_password": {"env": "SW_TEST_BSKY_PASSWORD"},
                                      "password": "x"})
    config = BlueskyConfig.model_validate({"handle": "a.bsky.social",
                                           "app_password": {"env": "SW_TEST_BSKY_PASSWORD"}})
    assert config.base_url == "https://bsky.social"
    assert PASSWORD not in repr(config)
