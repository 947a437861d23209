"""Digest emails: subject, counts, incidents, escaping, London time, chart, MIME, previews."""
from __future__ import annotations

import email
import email.policy
import importlib.util
import re
import shutil
import struct
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from alerts.base import OutgoingMessage
from alerts.digest import DigestIncident, DigestView, render_digest, trend_chart_png
from alerts.email import build_email

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "render_emails.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = '<script>alert(1)</script><a href="https://evil.example">parent portal</a> & "q"'


def incident(incident_id: int, category: str = "reputational", **changes) -> DigestIncident:
    base = dict(incident_id=incident_id, category=category, severity="low", subtype=None,
                title=f"Incident number {incident_id}", platforms=["rss"], mention_count=2,
                first_seen=datetime(2026, 7, 6, 9, 0, tzinfo=UTC),
                last_seen=datetime(2026, 7, 6, 9, incident_id % 60, tzinfo=UTC),
                status="open", url=f"https://news.example/{incident_id}")
    return DigestIncident(**{**base, **changes})


def view(**changes) -> DigestView:
    incidents = [
        incident(1, "safeguarding", severity="high", subtype="self_harm", platforms=["reddit"],
                 last_seen=datetime(2026, 7, 6, 20, 14, tzinfo=UTC),
                 alerted_at=datetime(2026, 7, 6, 20, 15, tzinfo=UTC)),
        incident(2, "disparaging", severity="medium", platforms=["x", "tiktok"],
                 last_seen=datetime(2026, 7, 7, 5, 0, tzinfo=UTC)),
        incident(3),
    ]
    base = dict(school_name="Harrowgate High School", role="dsl", period="daily",
                start=datetime(2026, 7, 6, 6, 30, tzinfo=UTC),
                end=datetime(2026, 7, 7, 6, 30, tzinfo=UTC), timezone="Europe/London",
                counts_by_category={"safeguarding": 1, "disparaging": 1, "reputational": 1},
                counts_by_platform={"reddit": 1, "x": 1, "tiktok": 1, "rss": 1},
                trend=[(date(2026, 6, 23) + timedelta(days=n),
                        {"safeguarding": n % 2, "disparaging": n % 3, "none": 4})
                       for n in range(14)],
                incidents=incidents)
    return DigestView(**{**base, **changes})


def text_between(html: str, start: str, end: str) -> str:
    return html[html.index(start):html.index(end, html.index(start))]


def test_subject_names_period_school_and_counts():
    assert render_digest(view()).subject == (
        "[Schoolwatch] Daily digest - Harrowgate High School - 3 incidents (1 safeguarding)")
    weekly = render_digest(view(period="weekly", incidents=[incident(3)]))
    assert weekly.subject == "[Schoolwatch] Weekly digest - Harrowgate High School - 1 incident"
    empty = render_digest(view(incidents=[]))
    assert empty.subject.endswith("- no incidents")


def test_counts_by_category_and_platform_are_shown():
    rendered = render_digest(view(counts_by_platform={"reddit": 7, "x": 12}))
    by_platform = text_between(rendered.html, "By platform", "</table>")
    assert re.search(r"reddit</td>\s*<td[^>]*>7</td>", by_platform)
    assert by_platform.index(">x<") < by_platform.index(">reddit<")  # largest first
    assert re.search(r"^  Safeguarding +1$", rendered.text, re.M)
    assert re.search(r"^  x +12$", rendered.text, re.M)
    assert "3 incidents this period: 1 safeguarding, 1 disparaging, 1 reputational" in rendered.text


def test_every_incident_is_listed_newest_first_with_alert_times():
    rendered = render_digest(view())
    for part in (rendered.html, rendered.text):
        positions = [part.index(f"Incident number {n}") for n in (2, 1, 3)]
        assert positions == sorted(positions)  # by last seen, newest first
    # Already alerted incidents stay listed, with the time of the alert in London time.
    assert "Alert sent Mon 6 Jul 2026, 21:15 BST" in rendered.html
    assert "Alert sent:  Mon 6 Jul 2026, 21:15 BST" in rendered.text
    assert rendered.html.count("Alert sent") == 1
    assert "1 was already sent as an immediate alert" in rendered.text


def test_empty_period_says_so():
    rendered = render_digest(view(incidents=[], counts_by_category={}, counts_by_platform={}))
    assert "No incidents this period." in rendered.html
    assert "No incidents this period." in rendered.text
    assert "Alert sent" not in rendered.html
    assert "What to do" not in rendered.text


def test_hostile_title_is_text_and_only_http_links_are_live():
    hostile = incident(9, "disparaging", title=HOSTILE + "\u202eunterminated",
                       url="javascript:alert(document.cookie)")
    rendered = render_digest(view(incidents=[hostile, incident(10)]))
    html = rendered.html
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="https://evil.example"' not in html and "<a href=\"https://evil" not in html
    assert 'href="javascript' not in html
    assert "javascript:alert(document.cookie)" in html  # shown, as text
    assert 'href="https://news.example/10"' in html
    # A right-to-left override in a title cannot flip the text after it.
    assert "<bdi>" + "&lt;script&gt;" in html
    assert HOSTILE in rendered.text and "javascript:alert(document.cookie)" in rendered.text


def test_times_are_london_time_bst_in_summer_and_gmt_in_winter():
    summer = render_digest(view())
    assert "Mon 6 Jul 2026, 07:30 BST to Tue 7 Jul 2026, 07:30 BST" in summer.text
    assert "Last seen Mon 6 Jul 2026, 21:14 BST" in summer.html
    # The clocks go back on Sun 25 Oct 2026: a weekly period spanning it shows both.
    autumn = render_digest(view(
        period="weekly", start=datetime(2026, 10, 19, 6, 30, tzinfo=UTC),
        end=datetime(2026, 10, 26, 7, 30, tzinfo=UTC),
        incidents=[incident(4, last_seen=datetime(2026, 10, 25, 9, 0, tzinfo=UTC))]))
    assert "Mon 19 Oct 2026, 07:30 BST to Mon 26 Oct 2026, 07:30 GMT" in autumn.html
    assert "Sun 25 Oct 2026, 09:00 GMT" in autumn.text


def test_text_part_carries_every_incident_counts_and_the_trend():
    incidents = [incident(n, ("safeguarding", "disparaging", "reputational")[n % 3],
                          url="not a url" if n == 5 else f"https://news.example/{n}")
                 for n in range(1, 9)]
    rendered = render_digest(view(incidents=incidents))
    for item in incidents:
        assert item.title in rendered.text
        assert item.url in rendered.text
        assert f"#{item.incident_id} {item.category.upper()}" in rendered.text
    assert "Mentions per day, last 14 days" in rendered.text
    assert re.search(r"^  Tue 23 Jun +4 +0 +0 +4$", rendered.text, re.M)
    assert re.search(r"^  Wed 24 Jun +6 +1 +1 +4$", rendered.text, re.M)
    assert "Follow your school's safeguarding procedure" in rendered.text


def test_chart_is_an_inline_image_whose_alt_text_has_the_numbers():
    rendered = render_digest(view())
    [img] = re.findall(r"<img [^>]*>", rendered.html)
    assert 'src="cid:trend"' in img and 'width="560"' in img
    alt = re.search(r'alt="([^"]*)"', img).group(1)
    assert "23 Jun 4" in alt and "24 Jun 6 (1 safeguarding, 1 disparaging, 4 not flagged)" in alt
    assert set(rendered.images) == {"trend"}
    assert render_digest(view(trend=[])).images == {}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_chart_is_a_small_deterministic_png():
    chart = trend_chart_png(view())
    assert png_size(chart) == (560, 200)
    assert len(chart) < 30_000
    assert b"Software" not in chart and b"matplotlib" not in chart
    assert trend_chart_png(view()) == chart
    assert trend_chart_png(view(school_name="Another School")) == chart  # data only
    changed = view(trend=[(day, {**counts, "safeguarding": 9}) for day, counts in view().trend])
    assert trend_chart_png(changed) != chart
    assert png_size(trend_chart_png(view(trend=[(date(2026, 7, 6), {})]))) == (560, 200)


def test_build_email_puts_the_chart_in_multipart_related():
    rendered = render_digest(view())
    message = OutgoingMessage(recipient="dsl@school.example.org", sender="sw@school.example.org",
                              subject=rendered.subject, text=rendered.text, html=rendered.html,
                              message_id="<d1.schoolwatch@school.example.org>",
                              images=rendered.images)
    mail = email.message_from_bytes(bytes(build_email(message)), policy=email.policy.default)
    assert mail.get_content_type() == "multipart/alternative"
    plain, related = list(mail.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "text/html"
    html, image = list(related.iter_parts())
    assert html.get_content_type() == "text/html"
    assert image.get_content_type() == "image/png"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "trend.png"
    cid = image["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html.get_content()
    assert image.get_content() == rendered.images["trend"]
    assert mail.get_body(("html",)).get_content() == html.get_content()
    assert "Incident number 3" in mail.get_body(("plain",)).get_content()


def test_build_email_without_images_is_unchanged():
    message = OutgoingMessage(recipient="a@school.example.org", sender="sw@school.example.org",
                              subject="s", text="plain", html="<p>html</p>", message_id="<x@y>")
    mail = email.message_from_bytes(bytes(build_email(message)), policy=email.policy.default)
    assert [p.get_content_type() for p in mail.walk()] == [
        "multipart/alternative", "text/plain", "text/html"]


def load_script():
    spec = importlib.util.spec_from_file_location("render_emails", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preview_script_writes_html_without_chromium(tmp_path, capsys):
    script = load_script()
    assert script.main(["--out", str(tmp_path), "--chromium", ""]) == 0
    assert "chromium is not installed" in capsys.readouterr().err
    daily = (tmp_path / "digest-daily.html").read_text()
    assert "data:image/png;base64," in daily and "cid:" not in daily
    assert not list(tmp_path.glob("*.png"))
    assert {p.stem for p in tmp_path.glob("*.html")} == {
        "alert-safeguarding", "alert-disparaging", "alert-reputational",
        "digest-daily", "digest-weekly", "digest-daily-empty"}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_preview_script_renders_real_pngs(tmp_path):
    from PIL import Image

    script = load_script()
    written = script.render_all(tmp_path, shutil.which("chromium"))
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 6
    for png in pngs:
        data = png.read_bytes()
        width, height = png_size(data)
        assert width == 700 and height > 300, png.name
        with Image.open(png) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        # A blank or failed screenshot is one or two colours; an email has text and colour.
        assert colours is not None and len(colours) > 50, png.name
    # The digest's banner is near-black and its safeguarding badge is the category red.
    with Image.open(tmp_path / "digest-daily.png") as image:
        rgb = image.convert("RGB")
        assert rgb.getpixel((100, 40)) == (0x20, 0x21, 0x24)
        assert (0xB0, 0x00, 0x20) in {c for _, c in rgb.getcolors(maxcolors=1_000_000)}
