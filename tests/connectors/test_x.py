"""The X connector: the real tweepy client against a real local server with recorded replies."""
from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from connectors.base import AuthFailed, NotConfigured, RateLimited, SchoolContext, TransientError
from connectors.x import MAX_QUERY_LENGTH, XConfig, XConnector, build_query
from tests.support.http_server import Reply

SEARCH = "/2/tweets/search/recent"
TOKEN = "AAAAAAAAAAAAAAAAAAAAAtest-bearer-token-harrowgate"
NEWEST_FIRST_POLL = "1989771234567890123"


@pytest.fixture
def connector(http_server, school, monkeypatch):
    """An x source pointed at the local server."""
    monkeypatch.setenv("SW_TEST_X_TOKEN", TOKEN)
    made: list[XConnector] = []

    def make(**options) -> XConnector:
        config = XConfig.model_validate(
            {"bearer_token": {"env": "SW_TEST_X_TOKEN"}, "base_url": http_server.url, **options})
        made.append(XConnector(config, school, "x-harrowgate"))
        return made[-1]

    yield make
    for source in made:
        source.close()


def one(request, name: str) -> str | None:
    """A single query parameter of a recorded request."""
    values = request.query.get(name)
    return values[0] if values else None


def test_first_poll_reads_both_pages_and_fills_authors(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_first_page.json"),
                      Reply.file("x/search_second_page.json"))
    batch = connector().fetch(None)

    assert [m.external_id for m in batch.mentions] == [
        "1989771234567890123", "1989769012345678901", "1989760098765432109",
        "1989512345678901234", "1989498765432109876"]
    first = batch.mentions[0]
    assert first.platform == "x"
    assert first.author == "samokafor_parent"
    assert first.url == "https://x.com/samokafor_parent/status/1989771234567890123"
    assert first.published_at == datetime(2026, 11, 14, 8, 12, 45, tzinfo=UTC)
    assert first.raw["author"]["name"] == "Sam Okafor"
    assert batch.next_cursor == NEWEST_FIRST_POLL
    assert batch.cost == 5

    page1, page2 = http_server.requests_to(SEARCH)
    assert page1.headers["Authorization"] == f"Bearer {TOKEN}"
    assert page1.headers["User-Agent"].startswith("Schoolwatch/")
    assert one(page1, "query") == (
        '("Harrowgate High School" OR @HarrowgateHigh OR "Harrowgate High" OR "HHS") -is:retweet')
    assert one(page1, "max_results") == "100"
    assert one(page1, "since_id") is None
    assert one(page1, "expansions") == "author_id"
    assert one(page1, "user.fields") == "username,name"
    assert "created_at" in one(page1, "tweet.fields").split(",")
    assert one(page2, "next_token") == "b26v89c19zqg8o3fr5yt1eqbqp4kcnc0nrc3l7xnmkbil"


def test_incremental_poll_sends_since_id_and_prefers_full_long_text(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_incremental.json"))
    batch = connector().fetch(NEWEST_FIRST_POLL)

    (request,) = http_server.requests_to(SEARCH)
    assert one(request, "since_id") == NEWEST_FIRST_POLL
    assert batch.next_cursor == "1989845566778899001"
    long_post = batch.mentions[0]
    assert long_post.text.endswith("Anyone else?")
    assert "inhaler" in long_post.text
    assert batch.mentions[1].author == "HarrowgateGazette"


def test_empty_page_keeps_the_cursor(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_empty.json"))
    batch = connector().fetch(NEWEST_FIRST_POLL)
    assert batch.mentions == []
    assert batch.next_cursor == NEWEST_FIRST_POLL
    assert batch.cost == 0


def test_max_pages_stops_paging(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_first_page.json"),
                      Reply.file("x/search_second_page.json"))
    batch = connector(max_pages=1).fetch(None)
    assert len(http_server.requests_to(SEARCH)) == 1
    assert batch.next_cursor == NEWEST_FIRST_POLL


def test_stale_since_id_is_dropped_and_search_repeated(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/error_400_since_id.json", status=400),
                      Reply.file("x/search_incremental.json"))
    batch = connector().fetch("1979000000000000000")
    first, second = http_server.requests_to(SEARCH)
    assert one(first, "since_id") == "1979000000000000000"
    assert one(second, "since_id") is None
    assert batch.next_cursor == "1989845566778899001"


def test_rejected_query_is_a_config_problem(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/error_400_query.json", status=400))
    with pytest.raises(NotConfigured, match="Ambiguous use of or"):
        connector().fetch(None)


def test_429_carries_the_reset_time(http_server, connector):
    http_server.route(SEARCH, Reply.file(
        "x/error_429.json", status=429,
        headers={"x-rate-limit-limit": "450", "x-rate-limit-remaining": "0",
                 "x-rate-limit-reset": "1794652200"}))
    with pytest.raises(RateLimited) as caught:
        connector().fetch(NEWEST_FIRST_POLL)
    assert caught.value.retry_at == datetime.fromtimestamp(1794652200, UTC)


def test_429_without_reset_header_still_names_a_time(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/error_429.json", status=429))
    with pytest.raises(RateLimited) as caught:
        connector().fetch(None)
    assert caught.value.retry_at is not None
    assert caught.value.retry_at > datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_is_auth_failed(http_server, connector, status):
    http_server.route(SEARCH, Reply.file(f"x/error_{status}.json", status=status))
    with pytest.raises(AuthFailed) as caught:
        connector().fetch(None)
    assert TOKEN not in str(caught.value)
    assert str(status) in str(caught.value)


def test_server_error_is_transient(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/error_500.json", status=500))
    with pytest.raises(TransientError) as caught:
        connector().fetch(NEWEST_FIRST_POLL)
    assert not isinstance(caught.value, RateLimited)


def test_malformed_json_is_transient(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_truncated.txt"))
    with pytest.raises(TransientError, match="malformed JSON"):
        connector().fetch(None)


def test_json_that_is_not_an_object_is_transient(http_server, connector):
    http_server.route(SEARCH, Reply(body="[1, 2, 3]"))
    with pytest.raises(TransientError):
        connector().fetch(None)


def test_failed_later_page_keeps_paid_posts_and_the_old_cursor(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_first_page.json"),
                      Reply.file("x/error_500.json", status=500))
    batch = connector().fetch("1989000000000000000")
    assert len(batch.mentions) == 3
    assert batch.cost == 3
    assert batch.next_cursor == "1989000000000000000"


def test_spent_budget_reads_nothing(http_server, connector, caplog):
    http_server.route(SEARCH, Reply.file("x/search_first_page.json"))
    source = connector(max_reads_per_day=300)
    source.remaining_budget = 0
    with caplog.at_level(logging.INFO, logger="connectors.x"):
        batch = source.fetch(NEWEST_FIRST_POLL)
    assert http_server.requests_to(SEARCH) == []
    assert batch.mentions == [] and batch.cost == 0
    assert batch.next_cursor == NEWEST_FIRST_POLL
    assert "x source x-harrowgate: daily read budget of 300 spent" in caplog.messages


def test_budget_smaller_than_a_page_asks_for_that_many(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_first_page.json"),
                      Reply.file("x/search_second_page.json"))
    source = connector()
    source.remaining_budget = 25
    batch = source.fetch(None)
    page1, page2 = http_server.requests_to(SEARCH)
    assert one(page1, "max_results") == "25"
    assert one(page2, "max_results") == "22"
    assert batch.cost == 5


def test_budget_below_ten_asks_for_xs_minimum_and_stops_when_spent(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_first_page.json"),
                      Reply.file("x/search_second_page.json"))
    source = connector()
    source.remaining_budget = 3
    batch = source.fetch(None)
    (request,) = http_server.requests_to(SEARCH)
    assert one(request, "max_results") == "10"
    assert batch.cost == 3
    assert batch.next_cursor == NEWEST_FIRST_POLL


def test_without_a_runner_budget_the_daily_figure_caps_one_fetch(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_first_page.json"))
    connector(max_reads_per_day=40).fetch(None)
    assert one(http_server.requests_to(SEARCH)[0], "max_results") == "40"


def test_options_lang_retweets_and_authors(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_empty.json"))
    connector(lang="en", exclude_retweets=False, include_authors=False).fetch(None)
    (request,) = http_server.requests_to(SEARCH)
    assert one(request, "query").endswith(") lang:en")
    assert "-is:retweet" not in one(request, "query")
    assert one(request, "expansions") is None


def test_posts_without_authors_get_a_working_url(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/search_second_page.json"))
    batch = connector(include_authors=False).fetch(None)
    assert batch.mentions[0].url.startswith("https://x.com/")


def test_bearer_token_never_reaches_the_logs(http_server, connector, caplog):
    http_server.route(SEARCH, Reply.file("x/search_empty.json"))
    with caplog.at_level(logging.DEBUG):
        connector().fetch(None)
    assert "Bearer [redacted]" in caplog.text  # tweepy logged its headers, token blanked
    assert TOKEN not in caplog.text


def test_config_rejects_unknown_keys_and_plain_secrets(monkeypatch):
    monkeypatch.setenv("SW_TEST_X_TOKEN", TOKEN)
    with pytest.raises(ValidationError):
        XConfig.model_validate({"bearer_token": {"env": "SW_TEST_X_TOKEN"}, "max_reads": 5})
    with pytest.raises(ValidationError):
        XConfig.model_validate({"bearer_token": TOKEN})
    with pytest.raises(ValidationError):
        XConfig.model_validate({"bearer_token": {"env": "SW_TEST_X_TOKEN"}, "page_size": 5})


def test_query_builder_keeps_priority_order_and_skips_other_platforms_handles():
    school = SchoolContext(id="h", name="Harrowgate High School", aliases=("Harrowgate High",),
                           handles=("@HarrowgateHigh", "harrowgatehigh.bsky.social",
                                    "@harrowgate@mastodon.social"))
    query, dropped = build_query(school, exclude_retweets=True, lang="en")
    assert query == ('("Harrowgate High School" OR @HarrowgateHigh OR "Harrowgate High")'
                     ' -is:retweet lang:en')
    assert dropped == []


def test_query_builder_single_term_needs_no_brackets():
    query, _ = build_query(SchoolContext(id="h", name='The "Harrowgate" Academy'),
                           exclude_retweets=False)
    assert query == '"The Harrowgate Academy"'


def test_query_builder_drops_lowest_priority_terms_to_fit_512(http_server, school, monkeypatch,
                                                              caplog):
    aliases = tuple(f"Harrowgate High School site {n} on the old Moor Lane campus"
                    for n in range(1, 20))
    long_school = school.model_copy(update={"aliases": aliases})
    query, dropped = build_query(long_school, exclude_retweets=True, lang="en")
    assert len(query) <= MAX_QUERY_LENGTH
    assert query.startswith(
        '("Harrowgate High School" OR @HarrowgateHigh OR "Harrowgate High School site 1 ')
    assert dropped and dropped[-1] == f'"{aliases[-1]}"'
    assert all(term not in query for term in dropped)
    # One more term would not have fitted.
    kept = len(aliases) - len(dropped)
    assert f'"{aliases[kept - 1]}"' in query

    monkeypatch.setenv("SW_TEST_X_TOKEN", TOKEN)
    config = XConfig.model_validate({"bearer_token": {"env": "SW_TEST_X_TOKEN"},
                                     "base_url": http_server.url, "lang": "en"})
    with caplog.at_level(logging.WARNING, logger="connectors.x"):
        XConnector(config, long_school, "x-long")
    assert "left out" in caplog.text and aliases[-1] in caplog.text


def test_query_builder_refuses_a_name_that_cannot_fit():
    with pytest.raises(NotConfigured):
        build_query(SchoolContext(id="h", name="Harrowgate " * 60))


def test_spent_credits_are_transient_and_say_so(http_server, connector):
    http_server.route(SEARCH, Reply.file("x/error_402.json", status=402))
    with pytest.raises(TransientError, match="no API credits left") as caught:
        connector().fetch(None)
    assert "402" in str(caught.value)
