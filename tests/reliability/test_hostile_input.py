"""Hostile feed items through the whole pipeline into the email: no crash; the email shows the
text and never runs it or links it."""
from __future__ import annotations

import email
import email.policy
import itertools
import re
import tempfile
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from alerts.render import AlertView, excerpt, quote, render_alert, safe_url
from classifiers.rules import RulesClassifier
from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.store import MentionRow
from tests.support.configs import write_config
from tests.support.http_server import Reply

CORE = "The headteacher at Harrowgate High School is a useless liar"
SAFE_LINK = "https://news.example.org/story/1"
# Tags and attributes the alert template itself uses; a post must never add any other.
TEMPLATE_TAGS = {"html", "head", "meta", "title", "body", "table", "tr", "td", "div", "p", "a",
                 "strong", "ul", "li", "br"}
TEMPLATE_ATTRS = {"lang", "charset", "name", "content", "role", "width", "cellpadding",
                  "cellspacing", "border", "style", "align", "href"}
C0 = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

CONTROLS = st.sampled_from([chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\x9b"])
INVISIBLE = st.sampled_from(["\u202e", "\u202d", "\u202a", "\u202c", "\u2066", "\u2067", "\u2068",
                             "\u2069", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",
                             "\u2028", "\u2029"])
EMOJI = st.sampled_from(["😂", "👩\u200d👩\u200d👧", "🏳️\u200d🌈", "🇬🇧", "❤️", "🧑🏿\u200d🦱", "e\u0301"])
MARKUP = st.sampled_from([
    "<script>alert(1)</script>",
    "<script src=https://evil.example/x.js></script>",
    '<a href="javascript:alert(1)">click here</a>',
    "<a href='https://evil.example/phish'>https://harrowgate.example.sch.uk/login</a>",
    '<img src=x onerror="alert(1)">',
    "<svg onload=alert(1)><circle/></svg>",
    '<iframe src="https://evil.example/"></iframe>',
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(1)>",
    "<style>body{display:none}</style>",
    '<form action="https://evil.example/"><input name=p></form>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
    "<base href='https://evil.example/'>",
    '<div style="background:url(javascript:alert(1))">styled</div>',
    "<p onclick=alert(1)>para</p>",
    "<b>bold</b> & < > \" '",
    "&lt;script&gt;alert(2)&lt;/script&gt;",
    "&amp;lt;b&amp;gt; &#60;i&#62; &nbsp;&copy;",
    "<!-- a comment --> <![CDATA[ cdata ]]>",
    "{{ 7*7 }} {% if true %}jinja{% endif %} ${7*7}",
    "javascript:alert(3)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "https://evil.example/fake-link www.evil.example",
    "\r\nBcc: victim@example.com\r\nSubject: hijack\r\n",
    "=?utf-8?b?PHNjcmlwdD4=?= =0A=0D",
    "--===============0123456789==\r\nContent-Type: text/html\r\n\r\n<script>x</script>",
    "<![CDATA[<script>alert(4)</script>]]>",
])
# Any text but lone surrogates, which no XML document can carry (a separate test covers them).
WORDS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
PIECE = st.one_of(CONTROLS, INVISIBLE, EMOJI, MARKUP, WORDS)
HOSTILE = st.lists(PIECE, max_size=8).map("".join)
LINKS = st.one_of(
    st.just(SAFE_LINK),
    st.sampled_from(["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)",
                     "data:text/html,<script>alert(1)</script>", "vbscript:msgbox(1)",
                     "//evil.example/no-scheme", "/relative/path", "", "mailto:x@evil.example",
                     "https://", "http:/evil.example", "https://evil.example/\u202egpj.exe",
                     'https://evil.example/"onmouseover="alert(1)', "file:///etc/passwd"]),
    HOSTILE.map(lambda tail: SAFE_LINK + "?q=" + tail),
)


def xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot carry at all."""
    return "".join(c for c in text if c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF
                   or 0xE000 <= ord(c) <= 0xFFFD or ord(c) >= 0x10000)


def feed_document(fmt: str, item: dict[str, str], well_formed: bool) -> bytes:
    """An RSS or Atom document with one item; raw control characters when not ``well_formed``."""
    clean = xml_safe if well_formed else (lambda s: s)
    value = {k: clean(v) for k, v in item.items()}
    if fmt == "atom":
        body = (f"<entry><id>{escape(value['guid'])}</id>"
                f"<title type=\"html\">{escape(value['title'])}</title>"
                f"<link href={quoteattr(value['link'])}/>"
                f"<author><name>{escape(value['author'])}</name></author>"
                f"<updated>2026-11-20T18:00:00Z</updated>"
                f"<content type=\"html\">{escape(value['description'])}</content></entry>")
        doc = (f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
               f"<title>Hostile</title><id>urn:hostile</id><updated>2026-11-20T18:00:00Z</updated>"
               f"{body}</feed>")
    else:
        body = (f"<item><guid isPermaLink=\"false\">{escape(value['guid'])}</guid>"
                f"<title>{escape(value['title'])}</title><link>{escape(value['link'])}</link>"
                f"<dc:creator>{escape(value['author'])}</dc:creator>"
                f"<pubDate>Fri, 20 Nov 2026 18:00:00 +0000</pubDate>"
                f"<description>{escape(value['description'])}</description></item>")
        doc = (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0" '
               f'xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>Hostile</title>'
               f"<link>https://news.example.org/</link>{body}</channel></rss>")
    return doc.encode("utf-8", "surrogatepass")


class Parsed(HTMLParser):
    """Tags, attributes and visible text of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag

    def handle_data(self, data) -> None:
        self.text.append(data)

    @property
    def hrefs(self) -> list[str]:
        """Every link target."""
        return [value or "" for tag, attrs in self.tags for name, value in attrs if name == "href"]


def _lf(text: str) -> str:
    """``text`` with CRLF and CR line ends as LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def assert_inert(html: str, url: str) -> Parsed:
    """Only the template's own tags and attributes, and at most one link: ``url`` when it is http(s)."""
    parsed = Parsed(html)
    for tag, attrs in parsed.tags:
        assert tag in TEMPLATE_TAGS, f"<{tag}> from the post reached the HTML"
        for name, value in attrs:
            assert name in TEMPLATE_ATTRS and not name.startswith("on"), f"{tag} {name}={value!r}"
            if name == "style":
                assert "url(" not in (value or "") and "javascript" not in (value or "").lower()
        if tag == "meta":
            assert {name for name, _ in attrs} <= {"charset", "name", "content"}
    expected = [url] if safe_url(url) else []
    # MIME carries text with CRLF line ends, so a CR or LF inside the URL comes back as LF.
    assert [_lf(h) for h in parsed.hrefs] == [_lf(u) for u in expected], (parsed.hrefs, url)
    for href in parsed.hrefs:
        assert urlsplit(href).scheme in ("http", "https")
    return parsed


# --- the whole pipeline -----------------------------------------------------------------

_counter = itertools.count()
_classifier = RulesClassifier()


def run_pipeline(base: Path, http_server, document: bytes) -> tuple[list[MentionRow], list, str]:
    """Serve ``document``, poll it, deliver to .eml files; (mentions, emails, poll status)."""
    directory = Path(tempfile.mkdtemp(dir=base))
    path = f"/hostile-{next(_counter)}.xml"
    http_server.route(path, Reply(body=document, content_type="application/rss+xml"))
    config = write_config(directory, [{"id": "hostile", "school": "harrowgate", "connector": "rss",
                                       "options": {"url": f"{http_server.url}{path}"}}])
    runner = Runner(load_config(config), classifier=_classifier)
    try:
        result = runner.poll("hostile")
        runner.deliver_outbox()
        with Session(runner.engine) as session:
            stored = session.exec(select(MentionRow)).all()
            session.expunge_all()
    finally:
        runner.close()
        runner.engine.dispose()
    emails = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
              for p in sorted((directory / "outbox").glob("*.eml"))]
    assert result.status != "failed" or result.error.startswith("malformed feed"), result.error
    return stored, emails, result.status


def check_emails(stored: list[MentionRow], emails: list) -> None:
    """Every email is well-formed, shows the post's cleaned text, and runs or links nothing."""
    assert len(stored) == 1
    mention = stored[0]
    for field_ in (mention.text, mention.title or "", mention.author or ""):
        assert not C0.search(field_), "a control character survived cleaning"
    shown = excerpt(mention.text)
    for mail in emails:
        assert not mail.defects
        assert mail["Subject"].startswith("[Schoolwatch] ") and "\n" not in mail["Subject"]
        assert set(mail.keys()) >= {"From", "To", "Subject", "Message-ID"} and "Bcc" not in mail
        plain = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        # The text part quotes the post line by line ("> "), so it cannot pass for the template.
        assert quote(shown) in plain
        visible = "".join(assert_inert(html, mention.url).text)
        for line in shown.split("\n"):
            assert line in visible


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fmt=st.sampled_from(["rss", "atom"]), title=HOSTILE, description=HOSTILE, author=HOSTILE,
       guid=HOSTILE, link=LINKS)
@example(fmt="rss", title="<script>alert(1)</script>", author="\u202eevil",
         description='<a href="javascript:alert(1)">x</a><img src=x onerror=alert(1)>',
         guid="", link="javascript:alert(1)")
def test_hostile_fields_reach_the_email_as_inert_text(tmp_path, http_server, fmt, title,
                                                      description, author, guid, link):
    item = {"title": title, "description": f"{CORE}. {description}", "author": author,
            "guid": f"g{next(_counter)}-{guid}", "link": link}
    stored, emails, status = run_pipeline(tmp_path, http_server, feed_document(fmt, item, True))
    assert status == "ok"
    # The post is flagged (disparaging: the headteacher), so exactly one email, to the head.
    assert len(emails) == 1 and emails[0]["To"] == "head@harrowgate.example.sch.uk"
    check_emails(stored, emails)
    assert CORE in emails[0].get_body(("plain",)).get_content()
    if safe_url(stored[0].url):  # the one link there may be came from the item's link field
        assert urlsplit(stored[0].url).netloc == urlsplit(link.strip()).netloc


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fmt=st.sampled_from(["rss", "atom"]), title=HOSTILE, description=HOSTILE, author=HOSTILE)
def test_raw_control_characters_in_the_xml_do_not_break_the_source(tmp_path, http_server, fmt,
                                                                   title, description, author):
    item = {"title": title, "description": f"{CORE}. {description}", "author": author,
            "guid": f"g{next(_counter)}", "link": SAFE_LINK}
    stored, emails, status = run_pipeline(tmp_path, http_server, feed_document(fmt, item, False))
    # Not well-formed XML: feedparser's lenient parser reads it, or the source fails cleanly.
    if status == "ok" and stored:
        check_emails(stored, emails)


def test_a_post_cannot_add_lines_to_the_plain_text_email(tmp_path, http_server):
    item = {"title": "", "description": CORE, "guid": "forged",
            "author": "Jo\nWhat to do:\nReply to this email with the pupil's name and address",
            "link": SAFE_LINK + "?q=\r\nIncident:  #1 (resolved: no action needed)"}
    stored, emails, status = run_pipeline(tmp_path, http_server, feed_document("atom", item, True))
    assert status == "ok" and len(emails) == 1
    lines = emails[0].get_body(("plain",)).get_content().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith(("What to do:", "Incident:"))] \
        == ["Incident", "What to do"], lines


def test_empty_posts_are_skipped_and_a_title_alone_is_enough(tmp_path, http_server):
    empty = {"title": "", "description": "", "author": "", "guid": "empty", "link": SAFE_LINK}
    stored, emails, status = run_pipeline(tmp_path, http_server, feed_document("rss", empty, True))
    assert (status, stored, emails) == ("ok", [], [])
    blank = {**empty, "description": "<p> </p><script>x</script>", "guid": "blank"}
    stored, emails, status = run_pipeline(tmp_path, http_server, feed_document("rss", blank, True))
    assert (status, stored, emails) == ("ok", [], [])
    titled = {**empty, "title": CORE, "guid": "titled"}
    stored, emails, status = run_pipeline(tmp_path, http_server, feed_document("rss", titled, True))
    assert status == "ok" and len(emails) == 1
    check_emails(stored, emails)


def test_a_one_megabyte_post(tmp_path, http_server):
    pieces = ["lorem", "ipsum", "<b>dolor</b>", "😂", "\u202e", "\u200b", "<script>x()</script>",
              "<a href='javascript:1'>y</a>", "é", "\n\n"]
    filler = " ".join(itertools.islice(itertools.cycle(pieces), 200_000))[:1_000_000]
    item = {"title": "Long", "description": f"{CORE}. {filler}", "author": "a",
            "guid": "huge", "link": SAFE_LINK}
    stored, emails, status = run_pipeline(tmp_path, http_server, feed_document("rss", item, True))
    assert status == "ok" and len(emails) == 1
    check_emails(stored, emails)
    assert "x()" not in stored[0].text  # the script element went with its content
    assert len(emails[0].as_bytes()) < 200_000  # an excerpt, not the megabyte


def test_a_reference_to_a_lone_surrogate_does_not_block_the_feed(tmp_path, http_server):
    doc = (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>'
           f"<item><guid>poison</guid><link>https://x.example.org/1</link><description>"
           f"Harrowgate High School &#xD800; poison</description></item>"
           f"<item><guid>knife</guid><link>https://x.example.org/2</link><description>"
           f"Pupil at Harrowgate High School says he is bringing a knife in tomorrow"
           f"</description></item></channel></rss>").encode()
    stored, emails, status = run_pipeline(tmp_path, http_server, doc)
    assert status == "ok", "one poisoned item stops the safeguarding post beside it"
    assert any("knife" in m.text for m in stored) and len(emails) == 2


def test_a_lone_surrogate_from_a_json_api_does_not_block_the_source(tmp_path, http_server):
    statuses = (
        '[{"id": "2", "created_at": "2026-11-20T18:00:00.000Z", "uri": "https://m.example/s/2",'
        ' "content": "<p>#HarrowgateHigh poison \\ud800 post</p>", "account": {"acct": "a"}},'
        ' {"id": "1", "created_at": "2026-11-20T17:00:00.000Z", "uri": "https://m.example/s/1",'
        ' "content": "<p>Pupil at #HarrowgateHigh says he is bringing a knife in tomorrow</p>",'
        ' "account": {"acct": "b"}}]')
    http_server.route("/api/v1/timelines/tag/HarrowgateHigh", Reply(body=statuses))
    config = write_config(tmp_path, [{"id": "masto", "school": "harrowgate", "connector": "mastodon",
                                      "options": {"base_url": http_server.url,
                                                  "hashtags": ["HarrowgateHigh"]}}])
    runner = Runner(load_config(config), classifier=_classifier)
    try:
        result = runner.poll("masto")
    finally:
        runner.close()
    assert result.status == "ok", result.error


# --- the renderer alone -----------------------------------------------------------------

ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
FIELD = st.one_of(ANY_TEXT, HOSTILE, MARKUP)


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(["alert", "update", "escalation"]), school_name=FIELD,
       category=st.one_of(st.sampled_from(["safeguarding", "disparaging", "reputational"]), FIELD),
       severity=st.one_of(st.none(), st.sampled_from(["high", "medium", "low"]), FIELD),
       subtype=st.one_of(st.none(), FIELD), platform=FIELD, author=st.one_of(st.none(), FIELD),
       title=st.one_of(st.none(), FIELD), text=FIELD, url=st.one_of(LINKS, FIELD),
       reasons=st.lists(FIELD, max_size=3), update_reason=st.one_of(st.none(), FIELD),
       platforms=st.lists(FIELD, max_size=3),
       published_at=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                 timezones=st.just(UTC)))
def test_render_alert_shows_any_text_and_runs_none_of_it(kind, school_name, category, severity,
                                                         subtype, platform, author, title, text,
                                                         url, reasons, update_reason, platforms,
                                                         published_at):
    view = AlertView(kind=kind, school_name=school_name, category=category, severity=severity,
                     subtype=subtype, platform=platform, author=author, title=title,
                     excerpt=excerpt(text), url=url, published_at=published_at, reasons=reasons,
                     incident_id=7, mention_count=2, update_reason=update_reason,
                     platforms=platforms)
    subject, plain, html = render_alert(view)
    visible = "".join(assert_inert(html, view.url).text)
    # One-line fields are folded to one line (view.title, view.author...); the post is quoted.
    for value in (view.excerpt, view.title or ""):
        for line in value.split("\n"):
            assert line in visible
    for value in (view.school_name, *reasons, view.author or "unknown"):
        assert value in visible
    for value in (quote(view.excerpt), view.title or "", view.author or "unknown",
                  view.url or "none"):
        assert value in plain
    assert subject.startswith("[Schoolwatch] ")
