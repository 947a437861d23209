"""Evidence: canonical hashed records, page snapshots, screenshots, packs that verify."""
from __future__ import annotations

import io
import json
import logging
import struct
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlmodel import Session, select

from classifiers.rules import RulesClassifier
from monitor.config import load_config
from monitor.evidence import (
    HTML,
    RECORD,
    SCREENSHOT,
    EvidenceError,
    EvidenceItem,
    EvidenceSettings,
    capture_page,
    capture_record,
    export_pack,
    manifest_sha256,
    verify_pack,
)
from monitor.evidence.canonical import canonical_json, sha256_hex
from monitor.evidence.chromium import find_chromium
from monitor.evidence.cli import export_command, verify_command
from monitor.pipeline import Runner
from monitor.store import AssessmentRow, AuditEntry, Incident, MentionRow, audit, make_engine
from tests.support.configs import write_config
from tests.support.http_server import Reply

# British Summer Time on the day, so the Europe/London text differs from UTC.
FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>Harrowgate community</title>
<item><guid>post-1</guid>
<title>Harrowgate High pupil says she wants to kill herself tonight</title>
<link>{base}/posts/1</link><author>worried_parent</author>
<pubDate>Wed, 01 Jul 2026 13:00:00 +0000</pubDate>
<description>Year 9 girl at Harrowgate High posted that she wants to kill herself tonight. Someone please check on her.</description>
</item></channel></rss>"""
EMPTY_FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>Harrowgate community</title>
</channel></rss>"""
BLOCK = (0x1E, 0x90, 0xFF)
PAGE = """<!DOCTYPE html><html><head><title>post 1</title></head>
<body style="margin:0;background:#ffffff;font-family:sans-serif">
<div id="block" style="width:400px;height:300px;background:#1e90ff"></div>
<h1>Harrowgate community: post 1</h1>
<p>Year 9 girl at Harrowgate High posted that she wants to kill herself tonight.</p>
</body></html>"""
CHROMIUM = find_chromium(EvidenceSettings())
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture
def site(http_server):
    """The feed and the post's page, served by a real local HTTP server."""
    http_server.route("/feed", Reply(body=FEED.format(base=http_server.url),
                                     content_type="application/rss+xml"))
    http_server.route("/posts/1", Reply(body=PAGE, content_type="text/html; charset=utf-8"))
    return http_server


@pytest.fixture
def runner(tmp_path, site):
    """The real pipeline over a real SQLite file, after one poll stored the flagged post."""
    path = write_config(tmp_path, [{"id": "community", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{site.url}/feed"}}])
    runner = Runner(load_config(path), classifier=RulesClassifier())
    result = runner.poll("community")
    assert result.status == "ok" and result.flagged == 1 and result.incidents == 1
    capture_records(runner.engine)
    yield runner
    runner.close()


def capture_records(engine) -> None:
    """What the pipeline's _store_mention does once wired: a record per stored mention lacking one."""
    with Session(engine) as session:
        recorded = set(session.exec(select(EvidenceItem.mention_id)
                                    .where(EvidenceItem.kind == RECORD)).all())
        for mention, assessment in session.exec(
                select(MentionRow, AssessmentRow).join(AssessmentRow,
                                                      AssessmentRow.mention_id == MentionRow.id)):
            if mention.id not in recorded:
                capture_record(session, mention, assessment)
        session.commit()


def only(engine, model):
    with Session(engine) as session:
        row = session.exec(select(model)).one()
        session.expunge(row)
        return row


def items(engine) -> list[EvidenceItem]:
    with Session(engine) as session:
        rows = session.exec(select(EvidenceItem).order_by(EvidenceItem.id)).all()
        session.expunge_all()
        return list(rows)


def rewrite(pack: Path, out: Path, change=None, drop: str | None = None,
            add: tuple[str, bytes] | None = None) -> Path:
    """A copy of ``pack`` with one member changed, dropped, or one added (CRCs kept valid)."""
    with zipfile.ZipFile(pack) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename == drop:
                continue
            data = source.read(info)
            if change and info.filename == change[0]:
                data = change[1](data)
            target.writestr(info, data)
        if add:
            target.writestr(*add)
    return out


def flip(data: bytes) -> bytes:
    """The same bytes with one bit of one byte in the middle changed."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def test_record_is_canonical_hashed_and_stamped_in_both_clocks(runner):
    item = only(runner.engine, EvidenceItem)
    mention = only(runner.engine, MentionRow)
    assert item.kind == RECORD and item.mention_id == mention.id
    assert item.incident_id == mention.incident_id is not None
    assert item.sha256 == sha256_hex(item.content) and item.size == len(item.content)
    record = json.loads(item.content)
    # Canonical: re-serialising the parsed record gives back the same bytes.
    assert canonical_json(record) == item.content
    assert b"\n" not in item.content and b'", "' not in item.content
    assert list(record) == sorted(record)
    posted = record["mention"]["posted_at"]
    assert posted == {"utc": "2026-07-01T13:00:00Z",
                      "europe_london": "2026-07-01T14:00:00+01:00 BST"}
    assert record["captured_at"]["utc"].endswith("Z")
    assert record["mention"]["url"].endswith("/posts/1")
    assert record["mention"]["author"] == "worried_parent"
    assert record["mention"]["external_id"] == "post-1"
    assert "kill herself" in record["mention"]["text"]
    assert record["assessment"]["category"] == "safeguarding"
    assert record["assessment"]["reasons"]
    assert record["raw"]["id"] == "post-1"  # the platform payload, kept because it was flagged


def test_capture_record_commits_only_with_the_callers_transaction(tmp_path, runner):
    before = len(items(runner.engine))
    with Session(runner.engine) as session:
        mention = session.exec(select(MentionRow)).one()
        capture_record(session, mention, None)
        session.rollback()
    assert len(items(runner.engine)) == before


def test_export_verifies_lists_every_item_and_is_audited(tmp_path, runner):
    incident = only(runner.engine, Incident)
    captured = capture_page(runner.engine, incident_mention(runner.engine),
                            EvidenceSettings(snapshot_html=True, allow_private_addresses=True))
    assert [i.kind for i in captured] == [HTML] and captured[0].content == PAGE.encode()
    with Session(runner.engine) as session:
        audit(session, "Ms Patel (DSL)", "incident.ack", "incident", incident.id,
              **{"from": "open", "to": "acknowledged"})
        session.commit()

    pack = export_pack(runner.engine, incident.id, tmp_path / "out" / "pack.zip", "Ms Patel (DSL)",
                       school_name="Harrowgate High School")
    report = verify_pack(pack)
    assert report.ok, report.lines()
    with zipfile.ZipFile(pack) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
        html = archive.read("report.html").decode()
    listed = {i["path"]: i for i in manifest["items"]}
    assert names == set(listed) | {"manifest.json"}
    assert set(report.checked) == set(listed)
    kinds = {i["kind"] for i in manifest["items"]}
    assert {"record", "raw", "html", "report"} <= kinds
    assert "report.html" in listed
    assert manifest["incident_id"] == incident.id and manifest["exported_by"] == "Ms Patel (DSL)"
    assert manifest["schoolwatch_version"] and manifest["exported_at"]["utc"].endswith("Z")
    assert all(len(i["sha256"]) == 64 and i["size"] > 0 for i in manifest["items"])
    record_item = next(i for i in manifest["items"] if i["kind"] == "record")
    assert record_item["sha256"] == items(runner.engine)[0].sha256  # the hash taken at capture
    assert record_item["captured_at"]["europe_london"]

    # The report: school, classification, reasons, both clocks, URL as text, who acknowledged.
    assert "Harrowgate High School" in html and "safeguarding" in html and "self harm" in html
    assert "rule self_harm" in html and "BST" in html and "UTC" in html
    assert "worried_parent" in html and "/posts/1" in html and "href=" not in html
    assert "Ms Patel (DSL)" in html and "incident.ack" in html and "acknowledged" in html

    with Session(runner.engine) as session:
        exports = session.exec(select(AuditEntry).where(AuditEntry.action == "evidence.export")).all()
    assert len(exports) == 1
    assert exports[0].actor == "Ms Patel (DSL)" and exports[0].object_id == str(incident.id)
    assert exports[0].detail["manifest_sha256"] == manifest_sha256(pack)


def incident_mention(engine) -> int:
    return only(engine, MentionRow).id


def test_changing_one_byte_of_any_item_fails_verify_naming_that_item(tmp_path, runner):
    incident = only(runner.engine, Incident)
    capture_page(runner.engine, incident_mention(runner.engine), EvidenceSettings(snapshot_html=True, allow_private_addresses=True))
    pack = export_pack(runner.engine, incident.id, tmp_path / "pack.zip", "dsl")
    with zipfile.ZipFile(pack) as archive:
        members = [n for n in archive.namelist() if n != "manifest.json"]
    assert len(members) >= 4
    for name in members:
        tampered = rewrite(pack, tmp_path / "tampered.zip", change=(name, flip))
        report = verify_pack(tampered)
        assert not report.ok, name
        assert report.names() == {name}, report.lines()
        assert [p.kind for p in report.problems] == ["tampered"]
        assert verify_command(tampered, stdout=io.StringIO()) == 1

    # The manifest itself is checked against the hash the export recorded in the audit log.
    recorded = manifest_sha256(pack)
    spaced = rewrite(pack, tmp_path / "manifest.zip",
                     change=("manifest.json", lambda d: d.replace(b"\n", b"\n ", 1)))
    assert verify_pack(spaced).ok  # same JSON, so only the recorded hash can tell
    report = verify_pack(spaced, expected_manifest_sha256=recorded)
    assert not report.ok and report.names() == {"manifest.json"}
    assert verify_pack(pack, expected_manifest_sha256=recorded).ok

    missing = verify_pack(rewrite(pack, tmp_path / "missing.zip", drop=members[0]))
    assert [(p.kind, p.path) for p in missing.problems] == [("missing", members[0])]
    extra = verify_pack(rewrite(pack, tmp_path / "extra.zip", add=("items/new.txt", b"x")))
    assert [(p.kind, p.path) for p in extra.problems] == [("unlisted", "items/new.txt")]


def test_evidence_altered_in_the_database_after_capture_fails_verify(tmp_path, runner):
    item = items(runner.engine)[0]
    with Session(runner.engine) as session:
        stored = session.get(EvidenceItem, item.id)
        stored.content = stored.content.replace(b"worried_parent", b"someone_else__")
        session.add(stored)
        session.commit()
    pack = export_pack(runner.engine, only(runner.engine, Incident).id, tmp_path / "pack.zip", "dsl")
    report = verify_pack(pack)
    assert not report.ok
    assert report.names() == {f"items/mention-{item.mention_id}/record-{item.id}.json"}


def test_a_flipped_byte_in_the_zip_file_itself_is_caught(tmp_path, runner):
    pack = export_pack(runner.engine, only(runner.engine, Incident).id, tmp_path / "pack.zip", "dsl")
    raw = bytearray(pack.read_bytes())
    with zipfile.ZipFile(pack) as archive:
        info = archive.getinfo("report.html")
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size // 2] ^= 0x01
    broken = tmp_path / "broken.zip"
    broken.write_bytes(bytes(raw))
    report = verify_pack(broken)
    assert not report.ok and report.names() == {"report.html"}


def test_an_item_deleted_at_the_source_is_still_in_a_fresh_pack(tmp_path, runner, site):
    incident_id = only(runner.engine, Incident).id
    mention_id = incident_mention(runner.engine)
    capture_page(runner.engine, mention_id, EvidenceSettings(snapshot_html=True, allow_private_addresses=True))
    first = export_pack(runner.engine, incident_id, tmp_path / "first.zip", "dsl")

    # The author deletes the post: the feed no longer lists it and its page is gone.
    site.route("/feed", Reply(body=EMPTY_FEED, content_type="application/rss+xml"))
    site.route("/posts/1", Reply(status=404, body=b"gone", content_type="text/plain"))
    assert runner.poll("community").fetched == 0
    later = capture_page(runner.engine, mention_id, EvidenceSettings(snapshot_html=True, allow_private_addresses=True))
    assert later[0].content is None and "404" in later[0].note

    second = export_pack(runner.engine, incident_id, tmp_path / "second.zip", "dsl")
    assert verify_pack(second).ok
    with zipfile.ZipFile(first) as a, zipfile.ZipFile(second) as b:
        before = {i["path"]: i["sha256"] for i in json.loads(a.read("manifest.json"))["items"]
                  if i["kind"] != "report"}
        after = json.loads(b.read("manifest.json"))
        assert before and all(after_hash == before[path] for path, after_hash in
                              ((i["path"], i["sha256"]) for i in after["items"]) if path in before)
        assert set(before) <= {i["path"] for i in after["items"]}
        snapshot = next(p for p in before if p.endswith(".html"))
        assert b.read(snapshot) == PAGE.encode()
        assert "kill herself" in json.loads(b.read(next(p for p in before if "/record-" in p)))[
            "mention"]["text"]
    assert any("404" in n["note"] for n in after["notes"])


def test_without_chromium_the_capture_says_so_and_the_rest_proceeds(tmp_path, runner, monkeypatch):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    settings = EvidenceSettings(snapshot_html=True, screenshot=True, allow_private_addresses=True)
    captured = capture_page(runner.engine, incident_mention(runner.engine), settings)
    by_kind = {i.kind: i for i in captured}
    assert by_kind[HTML].content == PAGE.encode()
    assert by_kind[SCREENSHOT].content is None and by_kind[SCREENSHOT].sha256 is None
    assert by_kind[SCREENSHOT].note == "chromium not installed: no screenshot"

    configured = EvidenceSettings(screenshot=True, chromium=str(tmp_path / "no" / "chromium"), allow_private_addresses=True)
    [note] = capture_page(runner.engine, incident_mention(runner.engine), configured)
    assert note.note == f"chromium not found at {tmp_path / 'no' / 'chromium'}: no screenshot"

    pack = export_pack(runner.engine, only(runner.engine, Incident).id, tmp_path / "pack.zip",
                       "dsl", settings=settings)
    assert verify_pack(pack).ok
    with zipfile.ZipFile(pack) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        html = archive.read("report.html").decode()
        assert "report.pdf" not in archive.namelist()
    assert manifest["report_pdf"] == "not rendered: chromium not installed"
    assert "chromium not installed: no screenshot" in {n["note"] for n in manifest["notes"]}
    assert "chromium not installed: no screenshot" in html


def test_page_capture_never_raises(tmp_path, runner, caplog):
    settings = EvidenceSettings(snapshot_html=True, allow_private_addresses=True)
    assert capture_page(runner.engine, 9999, settings) == []
    broken = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monitor.evidence.page"):
        assert capture_page(broken, 1, settings) == []
    [line] = caplog.messages
    assert "page capture for mention 1 failed" in line and "\n" not in line
    assert capture_page(runner.engine, incident_mention(runner.engine), EvidenceSettings()) == []


def test_settings_reject_unknown_keys():
    with pytest.raises(ValidationError):
        EvidenceSettings.model_validate({"screenshots": True})
    assert EvidenceSettings.model_validate({"screenshot": True, "timeout": 10}).timeout == 10


def test_cli_functions_export_and_verify(tmp_path, runner, capsys):
    settings = load_config(tmp_path / "config.toml")
    incident_id = only(runner.engine, Incident).id
    out, err = io.StringIO(), io.StringIO()
    assert export_command(settings, incident_id, tmp_path / "cli.zip", "head", stdout=out,
                          stderr=err) == 0
    digest = manifest_sha256(tmp_path / "cli.zip")
    assert f"manifest sha256 {digest}" in out.getvalue()
    printed = io.StringIO()
    assert verify_command(tmp_path / "cli.zip", stdout=printed) == 0
    assert printed.getvalue().startswith("intact: ") and digest in printed.getvalue()
    assert verify_command(tmp_path / "cli.zip", "0" * 64, stdout=io.StringIO()) == 1
    with zipfile.ZipFile(tmp_path / "cli.zip") as archive:
        assert "Harrowgate High School" in archive.read("report.html").decode()

    assert export_command(settings, 424242, tmp_path / "none.zip", "head", stdout=out,
                          stderr=err) == 1
    assert "no incident #424242" in err.getvalue() and not (tmp_path / "none.zip").exists()
    with pytest.raises(EvidenceError):
        export_pack(runner.engine, incident_id, tmp_path / "x.zip", "  ")
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"hello")
    lines = io.StringIO()
    assert verify_command(not_zip, stdout=lines) == 1 and "unreadable" in lines.getvalue()


@needs_chromium
def test_screenshot_is_a_real_image_of_the_page_and_the_report_prints_to_pdf(tmp_path, runner):
    from PIL import Image

    [shot] = capture_page(runner.engine, incident_mention(runner.engine),
                          EvidenceSettings(screenshot=True, timeout=120, allow_private_addresses=True))
    assert shot.kind == SCREENSHOT and shot.content is not None, shot.note
    assert shot.content.startswith(b"\x89PNG\r\n\x1a\n") and shot.sha256 == sha256_hex(shot.content)
    image = Image.open(io.BytesIO(shot.content)).convert("RGB")
    assert image.size == (1280, 2000)
    # The page's blue block is where the page put it, and the rest is not the same colour.
    assert all(abs(a - b) <= 8 for a, b in zip(image.getpixel((200, 150)), BLOCK))
    assert image.getpixel((1000, 1500)) == (255, 255, 255)
    assert len(image.getcolors(maxcolors=1 << 16) or []) > 3  # the heading's text is drawn too

    pack = export_pack(runner.engine, only(runner.engine, Incident).id, tmp_path / "pack.zip",
                       "dsl", settings=EvidenceSettings(timeout=120))
    assert verify_pack(pack).ok
    with zipfile.ZipFile(pack) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        png = next(i["path"] for i in manifest["items"] if i["kind"] == "screenshot")
        assert archive.read(png) == shot.content
        assert archive.read("report.pdf").startswith(b"%PDF-")
    assert manifest["report_pdf"] == "rendered with headless chromium"


@pytest.mark.parametrize("registered", [True, False])
def test_retention_deletes_a_mentions_evidence_with_it(runner, monkeypatch, registered):
    from monitor import retention

    if not registered:  # as in a process that never imported the evidence package
        monkeypatch.setattr(retention, "MENTION_CHILDREN",
                            [t for t in retention.MENTION_CHILDREN if t is not EvidenceItem])
    capture_page(runner.engine, incident_mention(runner.engine), EvidenceSettings(snapshot_html=True, allow_private_addresses=True))
    assert len(items(runner.engine)) == 2
    with Session(runner.engine) as session:
        assert retention.delete_mentions(session, [incident_mention(runner.engine)]) == 1
        session.commit()
    assert items(runner.engine) == []


def test_private_addresses_are_never_fetched(tmp_path, http_server):
    """A post linking to the school's own network must not make the daemon fetch it."""
    from monitor.evidence.page import _refusal

    settings = EvidenceSettings(snapshot_html=True)
    assert _refusal("http://127.0.0.1:8080/admin", settings) == "127.0.0.1 is a private or local address"
    assert _refusal("http://10.0.0.5/", settings) == "10.0.0.5 is a private or local address"
    assert _refusal("http://169.254.169.254/latest/meta-data", settings).endswith("private or local address")
    assert _refusal("file:///etc/passwd", settings) == "not an http(s) URL"
    assert _refusal("http://127.0.0.1/", EvidenceSettings(allow_private_addresses=True)) is None
