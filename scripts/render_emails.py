"""Render sample alert and digest emails to .html, .txt, .eml and (with chromium) .png previews."""
from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from alerts.base import OutgoingMessage
from alerts.digest import DigestIncident, DigestView, render_digest
from alerts.email import build_email
from alerts.render import AlertView, render_alert

SCHOOL = "Harrowgate High School"
SENDER = "Schoolwatch <schoolwatch@harrowgate.example.org>"
RECIPIENT = "dsl@harrowgate.example.org"
# A post that tries every trick: markup, a fake link, a right-to-left override, emoji.
HOSTILE = ('<script>alert("pwned")</script> Check the <a href="https://evil.example/login">'
           'Harrowgate parent portal</a> now \u202eexe.cod\u202c 😡🔥 & "quotes"')
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars")
PAGE_BACKGROUND = (0xF3, 0xF4, 0xF6)


def sample_alerts() -> dict[str, AlertView]:
    """One alert per flagged category, the safeguarding one carrying a hostile post."""
    common = dict(school_name=SCHOOL, timezone="Europe/London")
    return {
        "alert-safeguarding": AlertView(
            **common, kind="alert", category="safeguarding", severity="high", subtype="self_harm",
            platform="reddit", author="u/throwaway_hhs <img src=x onerror=alert(1)>",
            title="Year 10 at Harrowgate \u202egnitsop\u202c", excerpt=HOSTILE + "\nsecond line",
            url="https://reddit.example/r/harrowgate/comments/abc123",
            published_at=datetime(2026, 7, 6, 20, 14, tzinfo=UTC),
            reasons=["rule self_harm: 'cant do this anymore'", "transformer: safeguarding 0.93"],
            incident_id=4182, mention_count=1),
        "alert-disparaging": AlertView(
            **common, kind="alert", category="disparaging", severity="medium",
            subtype="staff_named", platform="x", author="@hhs_gossip", title=None,
            excerpt="Mr Example in the science dept is a total joke, someone should sort him out",
            url="javascript:alert(document.cookie)",
            published_at=datetime(2026, 1, 14, 16, 2, tzinfo=UTC),
            reasons=["rule staff_named: 'Mr Example'"], incident_id=4170, mention_count=3,
            platforms=["x", "tiktok"]),
        "alert-reputational": AlertView(
            **common, kind="update", category="reputational", severity="low", subtype=None,
            platform="rss", author="Harrowgate Gazette",
            title="Parents raise concerns over new uniform costs",
            excerpt="Parents at Harrowgate High School say the new blazer costs £65 ...",
            url="https://gazette.example/news/uniform", update_reason="mentions 9 -> 10",
            published_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
            reasons=["rule press: local news outlet"], incident_id=4101, mention_count=10),
    }


def _trend(end: date, days: int) -> list[tuple[date, dict[str, int]]]:
    # Fixed arithmetic rather than random numbers: the previews are the same every run.
    rows = []
    for n in range(days):
        day = end - timedelta(days=days - 1 - n)
        rows.append((day, {"safeguarding": (n * 7) % 5 // 3, "disparaging": (n * 5) % 4,
                           "reputational": int(n % 4 == 1), "none": 2 + (n * 11) % 6}))
    return rows


def sample_digests() -> dict[str, DigestView]:
    """A busy daily digest in summer, a weekly one across the clocks going back, an empty one."""
    def at(*parts: int) -> datetime:
        return datetime(*parts, tzinfo=UTC)

    def incidents(day: datetime) -> list[DigestIncident]:
        # Times are offsets from 00:00 UTC on ``day``, so one set serves both periods.
        def t(hours: float) -> datetime:
            return day + timedelta(hours=hours)

        return [
            DigestIncident(4182, "safeguarding", "high", "self_harm",
                           "Year 10 at Harrowgate \u202egnitsop\u202c", ["reddit"], 1,
                           t(20.2), t(20.2), "acknowledged",
                           "https://reddit.example/r/harrowgate/comments/abc123",
                           alerted_at=t(20.25)),
            DigestIncident(4185, "disparaging", "medium", "staff_named", HOSTILE,
                           ["x", "tiktok"], 4, t(15.6), t(29.9), "open",
                           "javascript:alert(document.cookie)"),
            DigestIncident(4186, "reputational", "low", None,
                           "Harrowgate High School named in council report on school transport",
                           ["rss"], 2, t(9), t(11.5), "open",
                           "https://council.example/reports/transport-2026"),
        ]

    weekly = incidents(at(2026, 10, 25)) + [
        DigestIncident(4160, "safeguarding", "medium", "bullying",
                       "Video of a fight outside the school gates", ["tiktok", "youtube"], 12,
                       at(2026, 10, 21, 15, 5), at(2026, 10, 24, 18, 20), "closed",
                       "https://tiktok.example/@someone/video/1",
                       alerted_at=at(2026, 10, 21, 15, 6)),
    ]
    common = dict(school_name=SCHOOL, role="dsl", timezone="Europe/London")
    return {
        "digest-daily": DigestView(
            **common, period="daily", start=at(2026, 7, 6, 6, 30), end=at(2026, 7, 7, 6, 30),
            counts_by_category={"safeguarding": 1, "disparaging": 1, "reputational": 1},
            counts_by_platform={"reddit": 1, "x": 1, "tiktok": 1, "rss": 1},
            trend=_trend(date(2026, 7, 6), 14), incidents=incidents(at(2026, 7, 6))),
        # Clocks go back on Sun 25 Oct 2026: the period starts in BST and ends in GMT.
        "digest-weekly": DigestView(
            **common, period="weekly", start=at(2026, 10, 19, 6, 30), end=at(2026, 10, 26, 7, 30),
            counts_by_category={"safeguarding": 2, "disparaging": 1, "reputational": 1},
            counts_by_platform={"tiktok": 2, "reddit": 1, "x": 1, "rss": 1, "youtube": 1},
            trend=_trend(date(2026, 10, 25), 28), incidents=weekly),
        "digest-daily-empty": DigestView(
            **common, period="daily", start=at(2026, 7, 7, 6, 30), end=at(2026, 7, 8, 6, 30),
            counts_by_category={}, counts_by_platform={},
            trend=[(date(2026, 7, 7) - timedelta(days=13 - n), {}) for n in range(14)]),
    }


def sample_messages() -> dict[str, OutgoingMessage]:
    """Every sample as the OutgoingMessage the outbox would send."""
    messages = {}
    for name, alert in sample_alerts().items():
        subject, text, html = render_alert(alert)
        messages[name] = OutgoingMessage(recipient=RECIPIENT, sender=SENDER, subject=subject,
                                         text=text, html=html, message_id=f"<{name}@preview>")
    for name, digest in sample_digests().items():
        rendered = render_digest(digest)
        messages[name] = OutgoingMessage(recipient=RECIPIENT, sender=SENDER,
                                         subject=rendered.subject, text=rendered.text,
                                         html=rendered.html, message_id=f"<{name}@preview>",
                                         images=rendered.images)
    return messages


def preview_html(message: OutgoingMessage) -> str:
    """The HTML with cid: images as data: URIs, which a browser can show (mail clients use cid:)."""
    html = message.html or ""
    for cid, data in message.images.items():
        html = html.replace(f'src="cid:{cid}"',
                            f'src="data:image/png;base64,{base64.b64encode(data).decode()}"')
    return html


def screenshot(chromium: str, html: Path, png: Path, height: int) -> None:
    """Render ``html`` to ``png`` with headless chromium, then trim the empty page below it."""
    with tempfile.TemporaryDirectory(prefix="sw-chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--window-size=700,{height}", f"--screenshot={png}",
                        html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    _trim(png)


def _trim(png: Path) -> None:
    # A fixed window is taller than short emails; cut the empty background below the card.
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    pixels = rgb.load()
    bottom = height
    while bottom > 1 and all(pixels[x, bottom - 1] == PAGE_BACKGROUND for x in range(0, width, 7)):
        bottom -= 1
    if bottom < height:
        rgb.crop((0, 0, width, min(height, bottom + 24))).save(png, optimize=True)


def render_all(out_dir: Path, chromium: str | None) -> list[Path]:
    """Write every sample's .html (browser preview), .txt, .eml and, with chromium, .png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, message in sample_messages().items():
        html = out_dir / f"{name}.html"
        html.write_text(preview_html(message), encoding="utf-8")
        text = out_dir / f"{name}.txt"
        text.write_text(f"Subject: {message.subject}\n\n{message.text}", encoding="utf-8")
        eml = out_dir / f"{name}.eml"
        eml.write_bytes(bytes(build_email(message)))
        written += [html, text, eml]
        if chromium:
            png = out_dir / f"{name}.png"
            # Digests run long; the empty part of the window is trimmed afterwards.
            screenshot(chromium, html, png, 4000 if name.startswith("digest") else 1600)
            written.append(png)
    return written


def main(argv: list[str] | None = None) -> int:
    """Render the previews and print the files written."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("email-previews"),
                        help="output folder (default: ./email-previews)")
    parser.add_argument("--chromium", default=shutil.which("chromium"),
                        help="chromium binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    for path in render_all(args.out, args.chromium):
        print(path)
    if not args.chromium:
        print("chromium is not installed, so no PNGs were made; the .html files open in any "
              "browser (apt-get install chromium to get PNGs).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
