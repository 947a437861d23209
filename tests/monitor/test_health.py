"""Health: `schoolwatch status`, and /healthz and /metrics served by the running daemon."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta

from classifiers.rules import RulesClassifier
from monitor.cli import main
from monitor.config import load_config
from monitor.health import health_report
from monitor.pipeline import Runner
from monitor.store import utcnow
from tests.support.configs import write_config
from tests.support.http_server import Reply

FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><guid>1</guid><description>Harrowgate High lad says hes bringing a knife in tomorrow</description>
<link>https://forum.example.org/1</link></item></channel></rss>"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_reports_and_exits_by_health(tmp_path, http_server, capsys):
    http_server.route("/good", Reply(body=FEED))
    http_server.route("/bad", Reply(status=500))
    path = write_config(tmp_path, [
        {"id": "good", "school": "harrowgate", "connector": "rss", "options": {"url": f"{http_server.url}/good"}},
        {"id": "bad", "school": "harrowgate", "connector": "rss", "options": {"url": f"{http_server.url}/bad"}}])
    runner = Runner(load_config(path), classifier=RulesClassifier())
    runner.poll("good")
    runner.poll("bad")
    assert main(["status", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "DEGRADED" in out and "source bad is failing: server error 500" in out
    assert main(["status", "--json", "--config", str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["outbox_pending"] == 2 and report["open_incidents"] == {"safeguarding": 1}


def test_stuck_outbox_is_failing(tmp_path, http_server):
    http_server.route("/good", Reply(body=FEED))
    path = write_config(tmp_path, [{"id": "good", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/good"}}])
    settings = load_config(path)
    runner = Runner(settings, classifier=RulesClassifier())
    runner.poll("good")
    later = health_report(runner.engine, settings, now=utcnow() + timedelta(hours=2))
    assert later.status == "failing"
    assert "2 messages undelivered, the oldest for 120 minutes" in later.problems[0]


def test_daemon_serves_healthz_and_metrics(tmp_path, http_server):
    http_server.route("/feed", Reply(body=FEED))
    port = free_port()
    config = write_config(tmp_path, [{"id": "feed", "school": "harrowgate", "connector": "rss",
                                      "options": {"url": f"{http_server.url}/feed"}}],
                          extra=f'[scheduler]\njitter = 0\n\n[health]\nlisten = "127.0.0.1:{port}"\n')
    daemon = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(config)],
                              stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        metrics = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 'schoolwatch_messages_total{outcome="sent"} 2.0' not in metrics:
            time.sleep(0.2)
            try:
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except (urllib.error.URLError, ConnectionError):
                continue
        assert 'schoolwatch_polls_total{source="feed",status="ok"} 1.0' in metrics
        assert 'schoolwatch_mentions_total{source="feed",stage="flagged"} 1.0' in metrics
        assert 'schoolwatch_messages_total{outcome="sent"} 2.0' in metrics
        assert "schoolwatch_outbox_pending 0.0" in metrics
        assert 'schoolwatch_incidents_open{category="safeguarding"} 1.0' in metrics
        assert "schoolwatch_classify_seconds_count 1.0" in metrics
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["sources"][0]["state"] == "ok"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0
