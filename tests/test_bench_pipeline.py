"""bench/pipeline.py runs end to end at a tiny size and reports what it did (no timings checked)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.database import sqlite_only

ROOT = Path(__file__).resolve().parents[1]


@sqlite_only("bench/pipeline.py measures SQLite file stores; the PostgreSQL pass would repeat it")
def test_quick_run_stores_what_was_served_and_mails_incidents(tmp_path):
    # The rules classifier stands in for the model: the same code path, without loading torch.
    command = [sys.executable, str(ROOT / "bench" / "pipeline.py"), "all", "--quick",
               "--classifier", "rules", "--mentions", "120", "--page-min", "20", "--page-max", "40",
               "--sizes", "400,800", "--recent", "200", "--batch", "60", "--idle-seconds", "1",
               "--settle", "0.5", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for heading in ("throughput", "growth:", "idle daemon:", "summary:", "per-mention cost 800/400"):
        assert heading in out
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    for name in ("instant", "rules"):
        run = result["throughput"][name]
        assert run["polls_failed"] == 0
        assert run["mentions"] == run["served"] == run["seen_keys"] == 120
        assert run["outbox_sent"] == run["outbox"] == run["emails"]
    instant = result["throughput"]["instant"]
    # The instant classifier gives every post its generated label, so the work downstream is real.
    assert instant["flagged"] == instant["generated_flagged"] > 0
    assert 0 < instant["incidents"] <= instant["flagged"]
    assert instant["outbox"] >= instant["incidents"]
    assert instant["evidence"] >= instant["flagged"]

    growth = result["growth"]
    added = []
    for size in ("400", "800"):
        before, after = growth["results"][size]["before"], growth["results"][size]["after"]
        assert before["mentions"] == int(size)
        assert after["mentions"] - before["mentions"] == growth["batch"] + growth["warm"]
        assert before["incidents"] > 0 and before["outbox"] > 0
        added.append((after["incidents"] - before["incidents"], after["outbox"] - before["outbox"]))
    # One fixed batch against the same recent stories: the same incidents and alerts either way.
    assert added[0] == added[1]

    idle = result["idle"]
    assert idle["exit_code"] == 0
    assert idle["mentions"] == idle["served"]
    assert idle["outbox_sent"] == idle["outbox"]
