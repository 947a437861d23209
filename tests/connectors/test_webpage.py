"""The webpage connector against a real local HTTP server serving recorded pages."""
from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import AuthFailed, NotConfigured, RateLimited, SchoolContext, TransientError
from connectors.webpage import WebpageConfig, WebpageConnector, extract_blocks, text_fragment_url
from tests.support.http_server import Reply

SCHOOL = SchoolContext(id="hhs", name="Harrowgate High School",
                       aliases=("Harrowgate High", "HHS"))
THREAD = "/t/55190/harrowgate-high-school-new-head-teacher"
ETAG_V1, ETAG_V2 = 'W/"5519-v1-8c2f"', 'W/"5519-v2-91ab"'
MODIFIED_V1 = "Sun, 01 Mar 2026 09:02:00 GMT"
NEW_POST = ("Heard she was pushed out after the Ofsted visit. Staff at HHS are saying the deputy "
            "head has been bullying people for years and nobody at the trust will listen.")
REPLY_POST = ("That's a big claim to make on a public forum. Ofsted rated them Good, the report "
              "is online.")


def make(server, path: str = THREAD, **options) -> WebpageConnector:
    config = WebpageConfig.model_validate({"url": server.url + path, **options})
    return WebpageConnector(config, SCHOOL, "hxtalk-thread")


def page(name: str, **kwargs) -> Reply:
    return Reply.file(f"webpage/{name}.html", content_type="text/html; charset=utf-8", **kwargs)


def v1() -> Reply:
    return page("forum_thread_v1", etag=ETAG_V1, headers={"Last-Modified": MODIFIED_V1})


def v2() -> Reply:
    return page("forum_thread_v2", etag=ETAG_V2,
                headers={"Last-Modified": "Mon, 02 Mar 2026 14:10:00 GMT"})


def test_first_poll_yields_the_main_content_blocks(http_server):
    http_server.route(THREAD, v1())
    url = http_server.url + THREAD
    batch = make(http_server).fetch(None)

    texts = [m.text for m in batch.mentions]
    assert texts[0] == "Harrowgate High School – new head teacher?"
    assert ("Letter came home today saying Mrs Okafor is leaving at Easter. Does anyone know who "
            "is taking over at Harrowgate High?") in texts
    assert "Does anyone know who is taking over?" in texts  # the quoted line is its own block
    joined = "\n".join(texts)
    for furniture in ("Forums", "Popular threads", "Page generated", "Post reply", "gtag",
                      "Harrowgate's community forum", "Best chippy"):
        assert furniture not in joined
    letter = next(m for m in batch.mentions if m.text.startswith("Letter came home"))
    assert letter.platform == "webpage"
    assert letter.external_id == hashlib.sha256(f"{url}\n{letter.text}".encode()).hexdigest()
    assert letter.title == "Harrowgate High School – new head teacher? | HX Talk Community Forum"
    assert letter.url == url + "#:~:text=Letter%20came%20home%20today,over%20at%20Harrowgate%20High%3F"
    assert batch.mentions[0].url == url + "#:~:text=Harrowgate%20High%20School%20%E2%80%93%20new%20head%20teacher%3F"
    assert batch.cost == 1
    assert len({m.external_id for m in batch.mentions}) == len(batch.mentions)


def test_second_poll_yields_only_new_blocks_and_sends_validators(http_server):
    http_server.route(THREAD, v1(), v2())
    connector = make(http_server)
    first = connector.fetch(None)
    second = connector.fetch(first.next_cursor)

    assert [m.text for m in second.mentions] == [NEW_POST, REPLY_POST]
    request = http_server.requests_to(THREAD)[1]
    assert request.headers["If-None-Match"] == ETAG_V1
    assert request.headers["If-Modified-Since"] == MODIFIED_V1
    assert json.loads(second.next_cursor)["etag"] == ETAG_V2


def test_not_modified_costs_nothing_and_keeps_the_cursor(http_server):
    http_server.route(THREAD, v1())  # the server answers 304 when If-None-Match matches
    connector = make(http_server)
    first = connector.fetch(None)
    again = connector.fetch(first.next_cursor)

    assert http_server.requests_to(THREAD)[1].headers["If-None-Match"] == ETAG_V1
    assert again.mentions == []
    assert again.cost == 0
    assert again.next_cursor == first.next_cursor


def test_unchanged_page_without_validators_yields_nothing(http_server):
    http_server.route(THREAD, page("forum_thread_v1"))
    connector = make(http_server)
    first = connector.fetch(None)
    again = connector.fetch(first.next_cursor)
    assert "If-None-Match" not in http_server.requests_to(THREAD)[1].headers
    assert again.mentions == []


def test_first_poll_can_record_without_emitting(http_server):
    http_server.route(THREAD, v1(), v2())
    connector = make(http_server, emit_existing_on_first_poll=False)
    first = connector.fetch(None)
    assert first.mentions == []
    assert [m.text for m in connector.fetch(first.next_cursor).mentions] == [NEW_POST, REPLY_POST]


def test_selector_chooses_the_blocks(http_server):
    http_server.route("/schools/harrowgate-high-school/reviews", page("reviews"))
    batch = make(http_server, "/schools/harrowgate-high-school/reviews",
                 selector="div.review p.review-text").fetch(None)
    assert [m.text for m in batch.mentions] == [
        "Homework is set on three different apps and half of it never appears. Emails to the "
        "head of year go unanswered for weeks.",
        "The maths department turned my daughter around. Brilliant support before the mocks."]
    assert batch.mentions[0].title == "Harrowgate High School reviews – SchoolScore UK"


def test_selector_of_whole_posts_keeps_author_and_text_together(http_server):
    http_server.route(THREAD, v1(), v2())
    connector = make(http_server, selector="article.post")
    first = connector.fetch(None)
    assert len(first.mentions) == 3
    new = connector.fetch(first.next_cursor).mentions
    assert len(new) == 1 + 1
    assert new[0].text.startswith("throwaway_hx2026 2 Mar 2026, 13:31 Heard she was pushed out")


def test_empty_page_yields_nothing(http_server):
    http_server.route(THREAD, Reply(body="<html><head><title>Gone</title></head><body></body></html>",
                                    content_type="text/html"))
    batch = make(http_server).fetch(None)
    assert batch.mentions == []
    assert json.loads(batch.next_cursor)["blocks"] == []


def test_blocks_that_leave_and_return_are_not_new_again(http_server):
    http_server.route(THREAD, v2(), v1(), v2())
    connector = make(http_server)
    cursor = connector.fetch(None).next_cursor
    cursor = connector.fetch(cursor).next_cursor
    assert connector.fetch(cursor).mentions == []


def test_remembered_hashes_are_capped_but_keep_the_current_page(http_server):
    old = [f"{i:016x}" for i in range(500)]
    cursor = json.dumps({"url": http_server.url + THREAD, "blocks": old})
    http_server.route(THREAD, page("forum_thread_v1"))
    batch = make(http_server, remember_blocks=100).fetch(cursor)
    blocks = json.loads(batch.next_cursor)["blocks"]
    assert len(blocks) == 100
    assert set(blocks[: len(batch.mentions)]) == {m.external_id[:16] for m in batch.mentions}


def test_bare_text_page_falls_back_to_lines(http_server):
    body = ("<html><body><div class='msg'>HHS bus was late again<br>third time this week</div>"
            "</body></html>")
    http_server.route("/board", Reply(body=body, content_type="text/html"))
    batch = make(http_server, "/board").fetch(None)
    assert [m.text for m in batch.mentions] == ["HHS bus was late again", "third time this week"]


def test_429_is_rate_limited(http_server):
    http_server.route(THREAD, Reply(status=429, body="slow down", content_type="text/plain",
                                    headers={"Retry-After": "600"}))
    before = datetime.now(UTC)
    with pytest.raises(RateLimited) as caught:
        make(http_server).fetch(None)
    assert before + timedelta(seconds=600) <= caught.value.retry_at
    assert caught.value.retry_at <= datetime.now(UTC) + timedelta(seconds=600)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_is_auth_failed(http_server, status):
    http_server.route(THREAD, Reply(status=status, body="<h1>Access denied</h1>",
                                    content_type="text/html"))
    with pytest.raises(AuthFailed):
        make(http_server).fetch(None)


def test_500_is_transient(http_server):
    http_server.route(THREAD, Reply(status=500, body="<h1>Internal Server Error</h1>",
                                    content_type="text/html"))
    with pytest.raises(TransientError) as caught:
        make(http_server).fetch(None)
    assert not isinstance(caught.value, RateLimited)


def test_a_page_that_is_not_html_is_not_configured(http_server):
    http_server.route(THREAD, Reply(body=b"%PDF-1.7", content_type="application/pdf"))
    with pytest.raises(NotConfigured, match="application/pdf"):
        make(http_server).fetch(None)


def test_broken_html_still_yields_text(http_server):
    http_server.route(THREAD, Reply(body="<html><body><main><p>Harrowgate High <b>open day<p>Sat",
                                    content_type="text/html"))
    assert [m.text for m in make(http_server).fetch(None).mentions] == [
        "Harrowgate High open day", "Sat"]


def test_text_fragment_escapes_directive_syntax():
    assert (text_fragment_url("https://hx.example/t/1", "Year 7-8 trips, fees & forms")
            == "https://hx.example/t/1#:~:text=Year%207%2D8%20trips%2C%20fees%20%26%20forms")
    assert (text_fragment_url("https://hx.example/t/1#post-9", "short")
            == "https://hx.example/t/1#post-9:~:text=short")
    assert text_fragment_url("https://hx.example/", "x" * 200) == "https://hx.example/"


def test_extract_blocks_reads_nested_blocks_once():
    html = (b"<main><ul><li><p>Inner paragraph</p></li></ul><table><tr><td><p>One</p><p>Two</p>"
            b"</td></tr></table><p>One</p></main>")
    assert extract_blocks(html, None, [])[1] == ["Inner paragraph", "One", "Two"]


def test_config_rejects_bad_selectors_and_urls():
    with pytest.raises(ValueError, match="CSS selector"):
        WebpageConfig.model_validate({"url": "https://hx.example/", "selector": "div[class="})
    with pytest.raises(ValueError, match="http"):
        WebpageConfig.model_validate({"url": "file:///etc/passwd"})
    with pytest.raises(ValueError):
        WebpageConfig.model_validate({"url": "https://hx.example/", "base_url": "x"})


def test_plain_text_page_is_read_by_lines(http_server):
    http_server.route("/notes.txt", Reply(body="HHS trip letter\n\nCoach leaves 7am\n".encode(),
                                          content_type="text/plain; charset=no-such-charset"))
    batch = make(http_server, "/notes.txt").fetch(None)
    assert [m.text for m in batch.mentions] == ["HHS trip letter", "Coach leaves 7am"]
    assert batch.mentions[0].title is None
