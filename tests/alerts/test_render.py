"""Alert emails: subject, complete text part, escaped HTML, safe links, London time."""
from __future__ import annotations

from datetime import UTC, datetime

from alerts.render import AlertView, excerpt, render_alert


def view(**changes) -> AlertView:
    base = dict(kind="alert", school_name="Harrowgate High School", category="safeguarding",
                severity="high", subtype="self_harm", platform="reddit", author="u/anon",
                title=None, excerpt="i cant do this anymore", url="https://reddit.example/r/x/1",
                published_at=datetime(2026, 7, 1, 21, 14, tzinfo=UTC),
                reasons=["rule self_harm: 'cant do this anymore'"], incident_id=42,
                mention_count=1)
    return AlertView(**{**base, **changes})


def test_subject_says_category_severity_school_and_platform():
    subject, _, _ = render_alert(view())
    assert subject == "[Schoolwatch] SAFEGUARDING (high, self harm) - Harrowgate High School - reddit"
    subject, _, _ = render_alert(view(kind="update", update_reason="severity medium -> high"))
    assert subject.startswith("[Schoolwatch] Update: SAFEGUARDING")


def test_text_part_has_everything_the_html_has():
    _, text, html = render_alert(view())
    for expected in ("Harrowgate High School", "reddit", "u/anon", "i cant do this anymore",
                     "https://reddit.example/r/x/1", "rule self_harm", "safeguarding procedure",
                     "Wed 1 Jul 2026, 22:14 BST"):
        assert expected in text, expected
    assert "22:14 BST" in html  # summer time in Europe/London


def test_post_text_is_escaped_and_fake_links_are_not_linked():
    hostile = '<script>alert(1)</script><a href="https://evil.example">click</a> & "quotes"'
    _, text, html = render_alert(view(excerpt=hostile, author="<img src=x onerror=alert(1)>",
                                      url="javascript:alert(document.cookie)"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="https://evil.example"' not in html
    assert "<img" not in html and "&lt;img" in html
    assert "javascript:" not in html.split("Link:")[0]
    assert 'href="javascript' not in html
    assert hostile in text


def test_real_links_are_linked():
    _, _, html = render_alert(view())
    assert 'href="https://reddit.example/r/x/1"' in html


def test_excerpt_cuts_at_a_word():
    assert excerpt("word " * 500, 50).endswith(" …")
    assert len(excerpt("word " * 500, 50)) <= 52
    assert excerpt("short", 50) == "short"
