"""Several platforms in one `run --once`: broken ones are recorded, the others still alert."""
from __future__ import annotations

from sqlmodel import Session, select

from monitor.cli import main
from monitor.config import load_config
from monitor.store import SourceState, make_engine
from tests.support.configs import write_config
from tests.support.http_server import Reply

FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><guid>n1</guid><title>Harrowgate High pupil says she wants to kill herself tonight</title>
<link>https://news.example.org/1</link></item></channel></rss>"""


def test_failing_connectors_do_not_stop_the_others(tmp_path, http_server, other_server,
                                                    monkeypatch, capsys):
    monkeypatch.setenv("SW_X_TOKEN", "x-token-never-logged")
    # X refuses the token; Mastodon is rate limited; the feed and a second X source work.
    other_server.route("/2/tweets/search/recent", Reply.file("x/error_401.json", status=401))
    http_server.route("/2/tweets/search/recent", Reply.file("x/search_first_page.json"))
    http_server.route("/api/v1/timelines/tag/HarrowgateHigh",
                      Reply.file("mastodon/error_429.json", status=429,
                                 headers={"X-RateLimit-Reset": "2099-01-01T00:00:00Z"}))
    http_server.route("/feed", Reply(body=FEED))
    sources = [
        {"id": "x-refused", "school": "harrowgate", "connector": "x",
         "options": {"bearer_token": {"env": "SW_X_TOKEN"}, "base_url": other_server.url}},
        {"id": "mastodon-limited", "school": "harrowgate", "connector": "mastodon",
         "options": {"base_url": http_server.url, "hashtags": ["HarrowgateHigh"]}},
        {"id": "news", "school": "harrowgate", "connector": "rss",
         "options": {"url": f"{http_server.url}/feed"}},
        {"id": "x-ok", "school": "harrowgate", "connector": "x",
         "options": {"bearer_token": {"env": "SW_X_TOKEN"}, "base_url": http_server.url,
                     "max_reads_per_day": 50, "max_pages": 1}},
    ]
    config = write_config(tmp_path, sources)
    assert main(["run", "--once", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    ids = {s["id"] for s in sources}
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()
             if line.split() and line.split()[0] in ids}
    assert lines == {"x-refused": "auth_failed", "mastodon-limited": "rate_limited",
                     "news": "ok", "x-ok": "ok"}
    assert list((tmp_path / "outbox").glob("dsl*.eml")), "the working feed's alert was not sent"
    assert "x-token-never-logged" not in out + err
    with Session(make_engine(load_config(config).store.url)) as session:
        states = {s.source_id: s for s in session.exec(select(SourceState))}
    assert states["x-refused"].disabled_reason.startswith("credentials refused")
    assert states["mastodon-limited"].not_before is not None
    assert states["news"].consecutive_failures == 0
    assert states["x-ok"].budget_spent > 0  # paid reads counted in the store
