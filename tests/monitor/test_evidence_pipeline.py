"""The pipeline captures evidence for flagged mentions; the CLI exports and verifies it."""
from __future__ import annotations
import io, json, zipfile
from sqlmodel import Session, select
from classifiers.rules import RulesClassifier
from monitor.cli import main
from monitor.config import load_config
from monitor.evidence.model import EvidenceItem
from monitor.pipeline import Runner
from monitor.store import Incident
from tests.monitor.test_evidence import FEED, PAGE
from tests.support.configs import write_config
from tests.support.http_server import Reply


def test_pipeline_captures_and_cli_exports(tmp_path, http_server, capsys):
    http_server.route("/feed", Reply(body=FEED.format(base=http_server.url)))
    http_server.route("/posts/1", Reply(body=PAGE, content_type="text/html"))
    path = write_config(tmp_path, [{"id": "c", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/feed"}}],
                        extra="[evidence]\nsnapshot_html = true\nscreenshot = true\nallow_private_addresses = true\n")
    runner = Runner(load_config(path), classifier=RulesClassifier())
    assert runner.poll("c").flagged == 1
    with Session(runner.engine) as s:
        kinds = sorted(i.kind for i in s.exec(select(EvidenceItem)))
        incident = s.exec(select(Incident)).one()
    assert kinds == ["html", "record", "screenshot"]
    out = tmp_path / "p.zip"
    assert main(["evidence", "export", str(incident.id), "--out", str(out), "--by", "dsl", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "manifest sha256" in printed
    assert main(["evidence", "verify", str(out)]) == 0
    assert main(["check-config", str(path)]) == 0
