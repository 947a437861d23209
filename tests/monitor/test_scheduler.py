"""The daemon as a real process: jobs configured as the issue asks, clean exit on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.scheduler import ESCALATION_JOB, FORGET_JOB, OUTBOX_JOB, PURGE_JOB, build_scheduler
from tests.support.configs import write_config
from tests.support.http_server import Reply

FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><guid>1</guid><title>Harrowgate High wins the chess cup</title>
<link>https://news.example.org/1</link></item></channel></rss>"""


def test_one_job_per_source_with_jitter_single_instance_and_coalescing(tmp_path, http_server):
    sources = [{"id": f"s{i}", "school": "harrowgate", "connector": "rss", "interval": "10m",
                "options": {"url": f"{http_server.url}/f{i}"}} for i in range(3)]
    sources[2]["enabled"] = False
    settings = load_config(write_config(tmp_path, sources))
    scheduler = build_scheduler(Runner(settings))
    scheduler.start(paused=True)  # job defaults are applied when the scheduler starts
    jobs = {job.id: job for job in scheduler.get_jobs()}
    scheduler.shutdown(wait=False)
    assert set(jobs) == {"source:s0", "source:s1", OUTBOX_JOB, PURGE_JOB, ESCALATION_JOB, FORGET_JOB}
    for job_id in ("source:s0", "source:s1"):
        job = jobs[job_id]
        assert job.max_instances == 1 and job.coalesce is True
        assert job.trigger.interval.total_seconds() == 600
        assert job.trigger.jitter == settings.scheduler.jitter


def test_daemon_polls_then_exits_cleanly_on_sigterm(tmp_path, http_server):
    http_server.route("/feed", Reply(body=FEED))
    config = write_config(tmp_path, [{"id": "feed", "school": "harrowgate", "connector": "rss",
                                      "options": {"url": f"{http_server.url}/feed"}}],
                          extra="[scheduler]\njitter = 0\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    daemon = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(config)],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not http_server.requests_to("/feed") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http_server.requests_to("/feed"), "the daemon never polled its source"
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, stderr
    assert "received SIGTERM" in stderr and "schoolwatch stopped" in stderr
