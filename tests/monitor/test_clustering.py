"""Near-duplicate clustering: recorded storms, syndicated news and feed churn, one incident each."""
from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from rapidfuzz import fuzz
from sqlmodel import Session, select

from classifiers.base import Assessment, Category, ClassifierInput, Severity
from classifiers.rules import RulesClassifier
from connectors.base import SchoolContext
from connectors.x import XConfig, XConnector
from monitor import incidents, pipeline
from monitor.clustering import (
    ClusteringSettings,
    StoryIndex,
    content_words,
    story_refs,
    story_text,
)
from monitor.config import load_config
from monitor.dedupe import canonical_url, text_hash
from monitor.pipeline import Runner
from monitor.retention import delete_mentions
from monitor.store import Incident, MentionRow, OutboxMessage, make_engine
from tests.support.configs import write_config
from tests.support.http_server import FIXTURES, Reply

STORIES = FIXTURES / "stories"
SEARCH = "/2/tweets/search/recent"
OUTLETS = ["gazette", "courier", "northgate", "dales", "pennine"]
DSL = {"dsl@harrowgate.example.sch.uk", "deputy.dsl@harrowgate.example.sch.uk"}
HEAD = {"head@harrowgate.example.sch.uk"}
SCHOOL = SchoolContext(id="harrowgate", name="Harrowgate High School",
                       aliases=("Harrowgate High", "HHS"), handles=("@HarrowgateHigh",),
                       exclusions=("Harrowgate High Street",))
NAMES = {"harrowgate": [SCHOOL.name, *SCHOOL.aliases, *SCHOOL.handles]}
FLAGGED = Assessment(category=Category.REPUTATIONAL, severity=Severity.MEDIUM)
NOT_FLAGGED = Assessment(category=Category.NONE)


class IndexedAttach:
    """Makes the Runner's attach use ``index``, so a test can inspect what was indexed."""

    def __init__(self, index: StoryIndex) -> None:
        self.index = index

    def __call__(self, session, row, assessment, _runner_index=None, **kwargs):
        return incidents.attach(session, row, assessment, self.index, **kwargs)


@pytest.fixture
def indexed(monkeypatch) -> IndexedAttach:
    hook = IndexedAttach(StoryIndex(ClusteringSettings(), school_names=NAMES))
    monkeypatch.setattr(pipeline, "attach", hook)
    return hook


def make_runner(tmp_path: Path, sources: list[dict]) -> Runner:
    # write_config consumes the dicts it is given.
    config = write_config(tmp_path, [dict(s) for s in sources])
    return Runner(load_config(config), classifier=RulesClassifier())


def rss_source(server, name: str) -> dict:
    return {"id": name.replace("_", "-"), "school": "harrowgate", "connector": "rss",
            "options": {"url": f"{server.url}/{name}.xml"}}


def serve_feeds(server, *names: str) -> None:
    for name in names:
        server.route(f"/{name}.xml", Reply.file(f"stories/{name}.xml",
                                                content_type="application/rss+xml"))


def poll_all(runner: Runner) -> None:
    for source in runner.settings.sources:
        result = runner.poll(source.id)
        assert result.status == "ok", (source.id, result.error)


def mentions(runner: Runner) -> list[MentionRow]:
    with Session(runner.engine) as session:
        return list(session.exec(select(MentionRow).order_by(MentionRow.id)))


def all_incidents(runner: Runner) -> list[Incident]:
    with Session(runner.engine) as session:
        return list(session.exec(select(Incident).order_by(Incident.id)))


def alerts(runner: Runner) -> Counter:
    with Session(runner.engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "alert")).all()
    return Counter((row.incident_id, row.recipient) for row in rows)


def storm_posts() -> list[dict]:
    """Every post of the recorded storm, oldest first."""
    posts = [p for n in (1, 2, 3)
             for p in json.loads((STORIES / f"x_storm_poll{n}.json").read_text())["data"]]
    return sorted(posts, key=lambda p: int(p["id"]))


# --- through the Runner -------------------------------------------------------------------

def test_retweet_storm_is_one_incident_and_one_alert_per_recipient(tmp_path, http_server,
                                                                   indexed, monkeypatch):
    monkeypatch.setenv("SW_TEST_X_TOKEN", "storm-token")
    http_server.route(SEARCH, *(Reply.file(f"stories/x_storm_poll{n}.json") for n in (1, 2, 3)))
    runner = make_runner(tmp_path, [{
        "id": "x-harrowgate", "school": "harrowgate", "connector": "x",
        "options": {"bearer_token": {"env": "SW_TEST_X_TOKEN"}, "base_url": http_server.url,
                    "exclude_retweets": False}}])
    for _ in range(3):  # the storm grows between polls
        poll_all(runner)

    (incident,) = all_incidents(runner)
    rows = mentions(runner)
    assert len(rows) == 40
    linked = [r for r in rows if r.incident_id == incident.id]
    assert {r.incident_id for r in rows} <= {incident.id, None}
    retweets = [r for r in rows if r.text.startswith("RT @kerry_w_mum:")]
    assert len(retweets) == 30 and all(r.incident_id == incident.id for r in retweets)
    pasted = [r for r in rows if "split lip" in r.text and not r.text.startswith("RT ")]
    assert len(pasted) == 4 and all(r.incident_id == incident.id for r in pasted)  # original + 3
    assert incident.mention_count == len(linked)
    assert incident.category == "safeguarding"
    # One immediate email per DSL for the whole storm.
    assert alerts(runner) == Counter({(incident.id, person): 1 for person in DSL})
    # Thirty identical retweets are one index entry, not thirty.
    assert len(indexed.index) <= len(linked) - 29


def test_one_story_from_five_outlets_is_one_incident(tmp_path, http_server, indexed):
    names = [f"syndicated_{o}" for o in OUTLETS]
    serve_feeds(http_server, *names)
    runner = make_runner(tmp_path, [rss_source(http_server, n) for n in names])
    poll_all(runner)

    rows = [r for r in mentions(runner) if "papers" in r.text]
    assert len(rows) == 5 and len({r.canonical_url for r in rows}) == 5
    (incident,) = all_incidents(runner)
    assert all(r.incident_id == incident.id for r in rows)
    assert incident.mention_count == 5
    assert alerts(runner) == Counter({(incident.id, person): 1 for person in HEAD})


def test_google_news_guid_churn_keeps_three_stories_as_three_incidents(tmp_path, http_server,
                                                                       indexed):
    http_server.route("/google-news.xml", *(Reply.file(f"stories/google_news_fetch{n}.xml",
                                                       content_type="application/rss+xml")
                                            for n in (1, 2, 3)))
    runner = make_runner(tmp_path, [{"id": "google-news", "school": "harrowgate",
                                     "connector": "rss",
                                     "options": {"url": f"{http_server.url}/google-news.xml"}}])
    for _ in range(3):
        poll_all(runner)

    rows = mentions(runner)
    assert len(rows) == 10 and len({r.external_id for r in rows}) == 10
    found = all_incidents(runner)
    assert len(found) == 3
    assert sorted(i.mention_count for i in found) == [3, 3, 3]
    walk = [r for r in rows if "food bank" in r.text]
    assert [r.incident_id for r in walk] == [None]
    for incident in found:
        titles = {r.title for r in rows if r.incident_id == incident.id}
        assert len(titles) == 3  # three headlines, one story
    assert sum(alerts(runner).values()) == 3


def test_distinct_stories_about_one_school_stay_apart(tmp_path, http_server, other_server,
                                                      indexed, monkeypatch):
    monkeypatch.setenv("SW_TEST_X_TOKEN", "storm-token")
    other_server.route(SEARCH, *(Reply.file(f"stories/x_storm_poll{n}.json") for n in (1, 2, 3)))
    names = ["distinct_gazette", *(f"syndicated_{o}" for o in OUTLETS)]
    serve_feeds(http_server, *names)
    http_server.route("/google-news.xml", *(Reply.file(f"stories/google_news_fetch{n}.xml",
                                                       content_type="application/rss+xml")
                                            for n in (1, 2, 3)))
    sources = [rss_source(http_server, n) for n in names]
    sources.append({"id": "google-news", "school": "harrowgate", "connector": "rss",
                    "options": {"url": f"{http_server.url}/google-news.xml"}})
    sources.append({"id": "x-harrowgate", "school": "harrowgate", "connector": "x",
                    "options": {"bearer_token": {"env": "SW_TEST_X_TOKEN"},
                                "base_url": other_server.url, "exclude_retweets": False}})
    runner = make_runner(tmp_path, sources)
    for _ in range(3):
        poll_all(runner)

    found = all_incidents(runner)
    # storm, exam leak, three Google News stories, Ofsted report, suspended teacher.
    assert len(found) == 7
    rows = mentions(runner)
    by_title = {r.title: r for r in rows if r.source_id == "distinct-gazette"}
    ofsted = by_title["Harrowgate High School rated 'requires improvement' by Ofsted"]
    teacher = by_title["Harrowgate High School teacher suspended over offensive social media posts"]
    assert ofsted.incident_id and teacher.incident_id and ofsted.incident_id != teacher.incident_id
    for title in ("Harrowgate High pupils raise \u00a34,200 for food bank with sponsored canal walk",
                  "Parents complain of dangerous parking outside Harrowgate High School",
                  "Harrowgate High School to cut sixth form courses amid funding shortfall"):
        assert by_title[title].incident_id is None, title
    counts = Counter(r.incident_id for r in rows if r.incident_id)
    assert counts[ofsted.incident_id] == 1 and counts[teacher.incident_id] == 1


def test_rebuild_after_restart_joins_the_same_incident(tmp_path, http_server, indexed):
    names = [f"syndicated_{o}" for o in OUTLETS]
    serve_feeds(http_server, *names)
    sources = [rss_source(http_server, n) for n in names]
    first = make_runner(tmp_path, sources)
    for source in sources[:3]:
        first.poll(source["id"])
    (incident,) = all_incidents(first)
    first.close()

    # A new process: nothing in memory, the index is rebuilt from the store.
    engine = make_engine(first.settings.store.url)
    indexed.index = StoryIndex.rebuild(engine, ClusteringSettings(), school_names=NAMES)
    assert len(indexed.index) == 3
    second = make_runner(tmp_path, sources)
    for source in sources[3:]:
        second.poll(source["id"])
    assert [i.id for i in all_incidents(second)] == [incident.id]
    assert [r.incident_id for r in mentions(second)] == [incident.id] * 5
    assert all_incidents(second)[0].mention_count == 5


# --- attach with a real Session -----------------------------------------------------------

def row_for(mention, school: str = "harrowgate", flagged: bool = True) -> MentionRow:
    return MentionRow(platform=mention.platform, external_id=mention.external_id,
                      source_id="test", school_id=school, url=mention.url,
                      canonical_url=canonical_url(mention.url), author=mention.author,
                      title=mention.title, text=mention.text, text_hash=text_hash(mention.text),
                      published_at=mention.published_at, fetched_at=mention.fetched_at,
                      raw=mention.raw if flagged else None)


def store(session, row, assessment, index, refs=()):
    session.add(row)
    session.flush()
    return incidents.attach(session, row, assessment, index, refs=refs)


def x_mentions() -> list:
    connector = XConnector(XConfig.model_validate({"bearer_token": {"env": "SW_UNUSED"}}),
                           SCHOOL, "x-test")
    posts = storm_posts()
    pages = [json.loads((STORIES / f"x_storm_poll{n}.json").read_text()) for n in (1, 2, 3)]
    users = [u for page in pages for u in page["includes"]["users"]]
    return connector._mentions(posts, {"users": users})


def test_native_quotes_and_replies_join_through_what_they_reference(engine, monkeypatch):
    monkeypatch.setenv("SW_UNUSED", "unused")
    index = StoryIndex(school_names=NAMES)
    classifier = RulesClassifier()
    with Session(engine) as session:
        for mention in x_mentions():  # oldest first, as if fetched in one poll
            assessment = classifier.classify([ClassifierInput(text=mention.text)])[0]
            row = row_for(mention, flagged=assessment.flagged)
            store(session, row, assessment, index, refs=story_refs("x", mention.raw))
        session.commit()
        rows = session.exec(select(MentionRow)).all()
        (incident,) = session.exec(select(Incident)).all()
    # Native quotes ("... https://t.co/...") and "this is disgraceful" replies share no
    # words with the story; they join because they quote or answer the original.
    assert len(rows) == 40 and all(r.incident_id == incident.id for r in rows)
    assert incident.mention_count == 40


def test_rolled_back_transaction_leaves_nothing_in_the_index(engine):
    index = StoryIndex()
    gazette, courier = (_feed_mention(f"syndicated_{o}") for o in ("gazette", "courier"))
    with Session(engine) as session:
        change = store(session, row_for(gazette), FLAGGED, index)
        assert change.created
        # Inside the transaction the story is already findable...
        assert store(session, row_for(courier), FLAGGED, index).incident.id == change.incident.id
        session.rollback()
    # ...but after a rollback neither the index nor the store remembers it.
    assert len(index) == 0
    assert index.find("harrowgate", story_text(courier.title, courier.text)) is None

    with Session(engine) as session:
        change = store(session, row_for(courier), FLAGGED, index)
        session.commit()
        incident_id = change.incident.id
    assert len(index) == 1
    assert index.find("harrowgate", story_text(gazette.title, gazette.text)) == incident_id


def test_failed_batch_closing_the_session_publishes_nothing(engine):
    index = StoryIndex()
    gazette = _feed_mention("syndicated_gazette")
    with pytest.raises(RuntimeError), Session(engine) as session:
        store(session, row_for(gazette), FLAGGED, index)
        raise RuntimeError("classifier fell over mid-batch")
    assert len(index) == 0


def test_index_forgets_incidents_the_store_no_longer_has(engine):
    index = StoryIndex()
    gazette, courier = (_feed_mention(f"syndicated_{o}") for o in ("gazette", "courier"))
    index.add(999, 4242, "harrowgate", story_text(gazette.title, gazette.text),
              datetime.now(UTC))
    with Session(engine) as session:
        change = store(session, row_for(courier), FLAGGED, index)
        session.commit()
        assert change.created and change.incident.id != 4242
    assert index.find("harrowgate", story_text(gazette.title, gazette.text)) == change.incident.id


def test_an_erased_mention_no_longer_steers_clustering(engine):
    index = StoryIndex()
    gazette, courier = (_feed_mention(f"syndicated_{o}") for o in ("gazette", "courier"))
    with Session(engine) as session:
        first = store(session, row_for(gazette), FLAGGED, index)
        session.commit()
        erased_id = first.incident.id
        [mention_id] = session.exec(select(MentionRow.id)).all()
    # Another process (`schoolwatch privacy erase`) deletes the post; the daemon's index has it.
    other_engine = make_engine(engine.url.render_as_string(hide_password=False))
    with Session(other_engine) as other:
        delete_mentions(other, [mention_id])
        other.commit()
    other_engine.dispose()
    assert len(index) == 1
    with Session(engine) as session:
        change = store(session, row_for(courier), FLAGGED, index)
        session.commit()
        assert change.created and change.incident.id != erased_id
        assert index.find("harrowgate", story_text(gazette.title, gazette.text)) == change.incident.id


def test_the_periodic_sweep_forgets_what_the_store_no_longer_has(engine):
    index = StoryIndex()
    gazette, northgate = (_feed_mention(f"syndicated_{o}") for o in ("gazette", "northgate"))
    with Session(engine) as session:
        store(session, row_for(gazette), FLAGGED, index)
        store(session, row_for(northgate, school="kingsway"), FLAGGED, index)
        session.commit()
        ids = session.exec(select(MentionRow.id).order_by(MentionRow.id)).all()
    with Session(engine) as session:
        delete_mentions(session, ids[:1])
        session.commit()
    assert len(index) == 2
    assert index.forget_missing(engine) == 1 and len(index) == 1
    assert index.forget_missing(engine) == 0


def test_unflagged_repeat_joins_but_never_opens(engine):
    index = StoryIndex()
    gazette, northgate = (_feed_mention(f"syndicated_{o}") for o in ("gazette", "northgate"))
    with Session(engine) as session:
        assert store(session, row_for(northgate, flagged=False), NOT_FLAGGED, index) is None
        opened = store(session, row_for(gazette), FLAGGED, index).incident.id
        session.commit()
    with Session(engine) as session:
        again = _feed_mention("syndicated_northgate", external_id="northgate-repost",
                              url="https://northgatepost.example.co.uk/amp/0093341")
        joined = store(session, row_for(again, flagged=False), NOT_FLAGGED, index)
        session.commit()
        assert not joined.created and joined.incident.id == opened


# --- the index on its own -----------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


STORY = ("Harrowgate High School has apologised after mock GCSE papers were leaked on Snapchat. "
         "Year 11 pupils will now sit new English and maths papers after half-term.")
RETOLD = ("Mock GCSE papers leaked on Snapchat: Harrowgate High School apologises, and Year 11 "
          "pupils will sit new English and maths papers after half-term.")


def test_entries_older_than_the_window_are_evicted():
    clock = Clock()
    index = StoryIndex(ClusteringSettings(window_days=14), clock=clock)
    assert index.add(1, 10, "harrowgate", STORY, clock.now)
    clock.now += timedelta(days=10)
    assert index.add(2, 20, "harrowgate", "Ofsted says behaviour in lessons at Harrowgate High "
                     "School is too often poor and leaders slow to act", clock.now)
    assert index.find("harrowgate", RETOLD) == 10
    clock.now += timedelta(days=5)  # the first story is now 15 days old
    assert index.find("harrowgate", RETOLD) is None
    assert len(index) == 1
    assert not index.add(3, 30, "harrowgate", STORY, clock.now - timedelta(days=20))
    clock.now += timedelta(days=30)
    assert index.evict() == 1 and len(index) == 0


def test_a_repeat_keeps_its_story_alive_without_growing_the_index():
    clock = Clock()
    index = StoryIndex(ClusteringSettings(window_days=14), clock=clock)
    index.add(1, 10, "harrowgate", STORY, clock.now)
    for day in range(1, 30):  # the same text reposted daily for a month
        clock.now += timedelta(days=1)
        assert not index.add(100 + day, 10, "harrowgate", STORY, clock.now)
    assert len(index) == 1
    assert index.find("harrowgate", RETOLD) == 10


def test_rebuild_loads_only_recent_incident_mentions(engine):
    now = datetime.now(UTC)
    gazette = _feed_mention("syndicated_gazette")
    with Session(engine) as session:
        incident = Incident(school_id="harrowgate", category="reputational", title="t")
        session.add(incident)
        session.flush()
        incident_id = incident.id
        for n, (age, linked) in enumerate([(1, True), (20, True), (1, False)]):
            row = row_for(gazette)
            row.external_id, row.fetched_at = f"item-{n}", now - timedelta(days=age)
            row.text += f" ({n})"
            row.incident_id = incident.id if linked else None
            session.add(row)
        session.commit()
    index = StoryIndex.rebuild(engine, ClusteringSettings(window_days=14))
    assert len(index) == 1
    assert index.find("harrowgate", story_text(gazette.title, gazette.text)) == incident_id


@pytest.mark.parametrize("text", [
    "lol", "this is disgraceful", "@kerry_w_mum @HarrowgateHigh this is disgraceful",
    "Harrowgate High School \U0001F621\U0001F621",
    "RT @x: lol https://t.co/abc #HarrowgateHigh #fail",
])
def test_short_texts_never_cluster(text):
    index = StoryIndex()
    assert not index.add(1, 10, "harrowgate", text, datetime.now(UTC))
    assert len(index) == 0
    index.add(2, 20, "harrowgate", f"{text} {STORY}", datetime.now(UTC))
    assert index.find("harrowgate", text) is None


def test_a_match_must_share_more_than_the_school_name():
    index = StoryIndex()
    index.add(1, 10, "harrowgate", STORY, datetime.now(UTC))
    # Five of its six content words are in the story, so token_set_ratio alone would confirm.
    post = "Harrowgate High School pupils: a year of pancakes"
    content = " ".join(content_words(post))
    assert fuzz.token_set_ratio(content, " ".join(content_words(STORY))) >= 75
    assert index.find("harrowgate", post) is None


def test_forgotten_entries_leave_no_buckets_behind():
    index = StoryIndex()
    for n in range(40):  # near-identical texts share most LSH buckets
        index.add(n, 100 + n % 3, "harrowgate", f"{STORY} update {n}", datetime.now(UTC))
    assert index.find("harrowgate", RETOLD) in {100, 101, 102}
    assert index.forget_incident(100) + index.forget_incident(101) == 27
    assert index.forget_mentions(range(40)) == 13
    assert len(index) == 0 and index.find("harrowgate", RETOLD) is None
    assert all(table.size() == 0 for table in index._schools["harrowgate"].lsh.hashtables)


def test_the_school_name_does_not_make_two_stories_alike():
    walk = ("Harrowgate High School news: #HarrowgateHigh HHS pupils at Harrowgate High School "
            "raise money on canal walk")
    parking = ("Harrowgate High School news: #HarrowgateHigh HHS parents at Harrowgate High "
               "School angry over canal parking")
    blind, aware = StoryIndex(), StoryIndex(school_names=NAMES)
    for index in (blind, aware):
        index.add(1, 10, "harrowgate", walk, datetime.now(UTC))
    assert blind.find("harrowgate", parking) == 10  # the name's words alone made them alike
    assert aware.find("harrowgate", parking) is None
    assert aware.find("harrowgate", walk.replace("canal walk", "sponsored canal walk")) == 10


def test_other_schools_never_match():
    index = StoryIndex()
    index.add(1, 10, "harrowgate", STORY, datetime.now(UTC))
    assert index.find("harrowgate", RETOLD) == 10
    assert index.find("millbrook", RETOLD) is None


def test_best_match_wins_whatever_the_insertion_order():
    close = STORY
    looser = ("Harrowgate High School pupils will sit new maths papers after half-term, the school "
              "said, after a week of complaints about its new timetable and leaked rotas.")
    for order in ([(1, 10, close), (2, 20, looser)], [(2, 20, looser), (1, 10, close)]):
        index = StoryIndex()
        for mention_id, incident_id, text in order:
            index.add(mention_id, incident_id, "harrowgate", text, datetime.now(UTC))
        match = index.match("harrowgate", RETOLD)
        assert match is not None and (match.incident_id, match.mention_id) == (10, 1)
    alone = StoryIndex()
    alone.add(2, 20, "harrowgate", looser, datetime.now(UTC))
    assert alone.find("harrowgate", RETOLD) == 20  # a real candidate, just not the best


def test_concurrent_adds_and_finds_are_safe():
    index = StoryIndex()
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(200):
                text = f"{STORY} item {offset} {n} word{n} other{offset}"
                index.add(offset * 1000 + n, offset, "harrowgate", text, datetime.now(UTC))
                index.find("harrowgate", RETOLD)
        except BaseException as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert index.find("harrowgate", RETOLD) is not None


def test_content_words_drop_share_markers_handles_links_and_tag_clouds():
    original = storm_posts()[0]["text"]
    retweet = next(p["text"] for p in storm_posts() if p["text"].startswith("RT "))
    assert retweet.endswith("\u2026")
    words = content_words(retweet)
    assert words[:4] == ["son", "year", "8", "harrowgate"]
    assert "kerry_w_mum" not in words and "rt" not in words
    assert content_words(original)[: len(words)] == words
    assert content_words("Shameful https://t.co/Qx7pL2mNa1 @HarrowgateHigh #a #b") == ["shameful"]
    assert content_words("Inline #Ofsted news via @gazette") == ["inline", "ofsted", "news"]
    footer = ("Pupils walked 12 miles. The post Pupils walk for food bank appeared first on "
              "Harrowgate Gazette.")
    assert content_words(footer) == ["pupils", "walked", "12", "miles"]
    google = ("Police called to school\u00a0\u00a0Harrowgate Gazette\n"
              "Officers attend\u00a0\u00a0Dales Today")
    assert content_words(google) == ["police", "called", "school", "officers", "attend"]


def test_story_text_drops_the_outlet_suffix_of_a_headline():
    headline = "Exam leak at school - Harrowgate Gazette"
    assert story_text(headline, "Body.") == "Exam leak at school\nBody."
    assert story_text("Exam leak", "Exam leak") == "Exam leak"
    assert story_text(None, "Just a post") == "Just a post"


def test_story_refs_from_x_and_bluesky_payloads():
    assert story_refs("x", {"id": "5", "conversation_id": "1",
                            "referenced_tweets": [{"type": "replied_to", "id": "3"},
                                                  {"type": "quoted", "id": "1"}]}) == ["3", "1"]
    assert story_refs("x", {"id": "5", "conversation_id": "5"}) == []
    assert story_refs("x", None) == []
    post = {"record": {"reply": {"root": {"uri": "at://a/p/1"}, "parent": {"uri": "at://a/p/2"}},
                       "embed": {"record": {"record": {"uri": "at://b/p/9"}}}}}
    assert story_refs("bluesky", post) == ["at://a/p/1", "at://a/p/2", "at://b/p/9"]
    assert story_refs("rss", {"id": "x"}) == []


def test_settings_are_strict():
    with pytest.raises(ValidationError):
        ClusteringSettings(lsh_treshold=0.5)
    with pytest.raises(ValidationError):
        ClusteringSettings(shingle_size=4, min_words=3)
    assert ClusteringSettings.model_validate({"window_days": 7}).window_days == 7


def _feed_mention(name: str, **changes):
    from connectors.rss import parse_feed

    mention = parse_feed((STORIES / f"{name}.xml").read_bytes(), name)[0]
    return mention.model_copy(update=changes) if changes else mention
