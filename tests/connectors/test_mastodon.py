"""The Mastodon connector against real local servers standing in for instances."""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from connectors.base import AuthFailed, NotConfigured, RateLimited, TransientError
from connectors.mastodon import MastodonConfig, MastodonConnector, default_hashtags
from tests.support.http_server import Reply, Request

TAG = "/api/v1/timelines/tag/HarrowgateHigh"
SEARCH = "/api/v2/search"
TOKEN = "mastodon-test-token-7Qx2"
NEWEST_FIRST_POLL = "113498765432101234"


@pytest.fixture
def connector(http_server, school, monkeypatch):
    """A mastodon source whose home instance is the local server."""
    monkeypatch.setenv("SW_TEST_MASTODON_TOKEN", TOKEN)
    made: list[MastodonConnector] = []

    def make(**options) -> MastodonConnector:
        config = MastodonConfig.model_validate(
            {"base_url": http_server.url, "hashtags": ["HarrowgateHigh"], **options})
        made.append(MastodonConnector(config, school, "mastodon-harrowgate"))
        return made[-1]

    yield make
    for source in made:
        source.close()


def tag_key(server) -> str:
    """The cursor key of the hashtag timeline on ``server``."""
    return f"{server.url} tag:harrowgatehigh"


def cursor_for(server, last_id: str) -> str:
    """A cursor that has seen ``last_id`` on the hashtag timeline of ``server``."""
    return json.dumps({tag_key(server): last_id})


def one(request: Request, name: str) -> str | None:
    """A single query parameter of a recorded request."""
    values = request.query.get(name)
    return values[0] if values else None


def test_first_poll_reads_the_newest_page(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/tag_first.json"))
    batch = connector().fetch(None)

    (request,) = http_server.requests_to(TAG)
    assert one(request, "limit") == "40"
    assert one(request, "min_id") is None
    assert "Authorization" not in request.headers
    assert len(batch.mentions) == 3
    concert, uniform, news = batch.mentions
    assert concert.external_id == (
        "https://mastodon.social/users/ruthtaylor/statuses/113498765432101234")
    assert concert.url == "https://mastodon.social/@ruthtaylor/113498765432101234"
    assert concert.author == "ruthtaylor@127.0.0.1"  # a local account, qualified
    assert concert.text == ("Lovely autumn concert at #HarrowgateHigh tonight. "
                            "The Year 8 choir absolutely killed it 🎶")
    assert concert.published_at == datetime(2026, 11, 14, 19, 42, 10, tzinfo=UTC)
    assert uniform.author == "mrsdavies@sfba.social"
    assert uniform.external_id == "https://sfba.social/users/mrsdavies/statuses/113498700000000001"
    assert uniform.text == (
        "Anyone else's kid come home from #HarrowgateHigh with the same letter about the uniform "
        "changes? Third change in two years & nobody consulted parents.\nNot impressed.")
    assert "harrowgatenews.example/2026/11/most-improved" in news.text
    assert json.loads(batch.next_cursor) == {tag_key(http_server): NEWEST_FIRST_POLL}
    assert batch.cost == 0


def test_incremental_poll_pages_forward_from_min_id_by_link_prev(http_server, connector):
    def newer(request: Request) -> Reply:
        reply = Reply.file("mastodon/tag_newer_page1.json")
        reply.headers["Link"] = (
            f'<{http_server.url}{TAG}?limit=2&max_id=113499001122334455>; rel="next", '
            f'<{http_server.url}{TAG}?limit=2&min_id=113499112233445566>; rel="prev"')
        return reply

    http_server.route(TAG, newer, Reply.file("mastodon/tag_newer_page2.json"))
    batch = connector(page_size=2).fetch(cursor_for(http_server, NEWEST_FIRST_POLL))

    first, second = http_server.requests_to(TAG)
    assert one(first, "min_id") == NEWEST_FIRST_POLL
    assert one(second, "min_id") == "113499112233445566"
    assert [m.raw["id"] for m in batch.mentions] == [
        "113499112233445566", "113499001122334455", "113499334455667788"]
    warned = batch.mentions[2]
    assert warned.text.startswith("Bullying, screenshots\n\nScreenshots of a group chat")
    assert "come and ask about the robotics club" in batch.mentions[0].text
    assert "great\ncome" in batch.mentions[0].text  # <br /> is a line break
    assert json.loads(batch.next_cursor) == {tag_key(http_server): "113499334455667788"}


def test_empty_page_keeps_the_cursor(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/empty.json"))
    cursor = cursor_for(http_server, NEWEST_FIRST_POLL)
    batch = connector().fetch(cursor)
    assert batch.mentions == []
    assert json.loads(batch.next_cursor) == json.loads(cursor)


def test_a_link_to_another_host_is_not_followed(http_server, connector):
    def newer(request: Request) -> Reply:
        reply = Reply.file("mastodon/tag_newer_page1.json")
        reply.headers["Link"] = (
            '<https://elsewhere.example/api/v1/timelines/tag/x?min_id=1>; rel="prev"')
        return reply

    http_server.route(TAG, newer)
    batch = connector(page_size=2).fetch(cursor_for(http_server, NEWEST_FIRST_POLL))
    assert len(http_server.requests_to(TAG)) == 1
    assert len(batch.mentions) == 2


def test_search_with_token_runs_on_the_home_instance_only(http_server, other_server, connector):
    http_server.route(TAG, Reply.file("mastodon/empty.json"))
    http_server.route(SEARCH, Reply.file("mastodon/search_statuses.json"))
    other_server.route(TAG, Reply.file("mastodon/tag_first.json"))
    source = connector(token={"env": "SW_TEST_MASTODON_TOKEN"}, instances=[other_server.url],
                       search_terms=["Harrowgate High School"])
    batch = source.fetch(None)

    (search,) = http_server.requests_to(SEARCH)
    assert search.headers["Authorization"] == f"Bearer {TOKEN}"
    assert one(search, "q") == '"Harrowgate High School"'
    assert one(search, "type") == "statuses"
    assert http_server.requests_to(TAG)[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert "Authorization" not in other_server.requests_to(TAG)[0].headers
    assert other_server.requests_to(SEARCH) == []
    assert len(batch.mentions) == 4
    state = json.loads(batch.next_cursor)
    assert state[f"{http_server.url} search:Harrowgate High School"] == "113499210987654321"
    assert state[tag_key(other_server)] == NEWEST_FIRST_POLL


def test_search_incremental_sends_min_id(http_server, connector):
    http_server.route(SEARCH, Reply.file("mastodon/search_statuses.json"))
    source = connector(token={"env": "SW_TEST_MASTODON_TOKEN"}, hashtags=[],
                       search_terms=["Harrowgate High"])
    key = f"{http_server.url} search:Harrowgate High"
    batch = source.fetch(json.dumps({key: "113499000000000000"}))
    (search,) = http_server.requests_to(SEARCH)
    assert one(search, "min_id") == "113499000000000000"
    assert one(search, "offset") == "0"
    assert json.loads(batch.next_cursor) == {key: "113499210987654321"}


def test_without_token_no_search_is_made(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/empty.json"))
    connector(search_terms=["Harrowgate High"]).fetch(None)
    assert http_server.requests_to(SEARCH) == []


def test_one_failing_instance_does_not_stop_the_others(http_server, other_server, connector,
                                                       caplog):
    http_server.route(TAG, Reply.file("mastodon/tag_first.json"))
    other_server.route(TAG, Reply.file("mastodon/error_500.json", status=500))
    old = json.dumps({tag_key(other_server): "113400000000000000"})
    with caplog.at_level(logging.WARNING, logger="connectors.mastodon"):
        batch = connector(instances=[other_server.url]).fetch(old)
    assert len(batch.mentions) == 3
    state = json.loads(batch.next_cursor)
    assert state[tag_key(http_server)] == NEWEST_FIRST_POLL
    assert state[tag_key(other_server)] == "113400000000000000"  # unchanged, retried next time
    assert "server error 500" in caplog.text


def test_the_same_status_seen_on_two_instances_is_one_mention(http_server, other_server,
                                                                connector):
    http_server.route(TAG, Reply.file("mastodon/tag_first.json"))
    other_server.route(TAG, Reply.file("mastodon/tag_first.json"))
    batch = connector(instances=[other_server.url]).fetch(None)
    assert len(batch.mentions) == 3


def test_429_carries_the_reset_time(http_server, connector):
    http_server.route(TAG, Reply.file(
        "mastodon/error_429.json", status=429,
        headers={"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "0",
                 "X-RateLimit-Reset": "2026-11-14T22:15:00.123456Z"}))
    with pytest.raises(RateLimited) as caught:
        connector().fetch(None)
    assert caught.value.retry_at == datetime(2026, 11, 14, 22, 15, 0, 123456, tzinfo=UTC)


def test_every_instance_failing_raises(http_server, other_server, connector):
    http_server.route(TAG, Reply.file("mastodon/error_500.json", status=500))
    other_server.route(TAG, Reply.file("mastodon/error_500.json", status=503))
    with pytest.raises(TransientError):
        connector(instances=[other_server.url]).fetch(None)


def test_refused_token_is_auth_failed(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/error_401.json", status=401))
    with pytest.raises(AuthFailed, match="refused the token") as caught:
        connector(token={"env": "SW_TEST_MASTODON_TOKEN"}, search_terms=[]).fetch(None)
    assert TOKEN not in str(caught.value)


def test_instance_without_public_timelines_is_auth_failed(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/error_403.json", status=403))
    with pytest.raises(AuthFailed, match="without logging in"):
        connector().fetch(None)


def test_server_error_is_transient(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/error_500.json", status=500))
    with pytest.raises(TransientError) as caught:
        connector().fetch(None)
    assert not isinstance(caught.value, RateLimited)


def test_malformed_json_is_transient(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/tag_truncated.txt"))
    with pytest.raises(TransientError, match="malformed JSON"):
        connector().fetch(None)


def test_json_of_the_wrong_shape_is_transient(http_server, connector):
    http_server.route(TAG, Reply(body='{"error": "not a list"}'))
    with pytest.raises(TransientError):
        connector().fetch(None)


def test_unreadable_cursor_starts_afresh(http_server, connector):
    http_server.route(TAG, Reply.file("mastodon/tag_first.json"))
    batch = connector().fetch("not json")
    assert one(http_server.requests_to(TAG)[0], "min_id") is None
    assert len(batch.mentions) == 3


def test_default_hashtags_come_from_handles_and_multi_word_names(school):
    school = school.model_copy(update={"handles": ("@HarrowgateHigh", "hhs.bsky.social")})
    assert default_hashtags(school) == ["HarrowgateHigh", "HarrowgateHighSchool"]


def test_config_validates(monkeypatch):
    with pytest.raises(ValidationError):
        MastodonConfig.model_validate({"hashtags": ["two words"]})
    with pytest.raises(ValidationError):
        MastodonConfig.model_validate({"instances": ["mastodon.social"]})
    with pytest.raises(ValidationError):
        MastodonConfig.model_validate({"token": "plain-text-token"})
    with pytest.raises(ValidationError):
        MastodonConfig.model_validate({"tags": ["x"]})
    config = MastodonConfig.model_validate({"hashtags": ["#HarrowgateHigh"],
                                            "instances": ["https://fosstodon.org/"]})
    assert config.hashtags == ["HarrowgateHigh"]
    assert config.instances == ["https://fosstodon.org"]


def test_nothing_to_read_is_a_config_problem(connector):
    with pytest.raises(NotConfigured):
        connector(hashtags=[]).fetch(None)
