"""`schoolwatch classify`: the JSON Lines contract, run as a real subprocess."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.configs import write_config

CATEGORIES = {"safeguarding", "disparaging", "reputational", "none"}


def classify(lines: list[str], *args: str) -> tuple[int, list[dict]]:
    done = subprocess.run([sys.executable, "-m", "monitor", "--log-level", "warning", "classify", *args],
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=300, env={"PATH": "", "HF_HUB_OFFLINE": "1"})
    assert done.stderr == "" or done.returncode != 0, done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_contract_one_line_per_input_in_order():
    inputs = [
        {"id": 1, "text": "i cant do this anymore, took pills tonight, bye everyone"},
        {"id": "b", "text": "The Year 11 netball team absolutely killed it on Saturday!"},
        {"id": 3, "text": "Mr Dawson at Harrowgate High is a useless bully and a liar", "school": "x"},
        {"id": 4, "text": ""},
    ]
    code, out = classify([json.dumps(i) for i in inputs])
    assert code == 0
    assert [o["id"] for o in out] == [1, "b", 3, 4]
    for verdict in out:
        assert set(verdict) == {"id", "category", "severity", "subtype", "scores", "reasons"}
        assert verdict["category"] in CATEGORIES
        assert set(verdict["scores"]) == {"safeguarding", "disparaging", "reputational"}
        assert all(isinstance(v, float) and 0 <= v <= 1 for v in verdict["scores"].values())
        assert isinstance(verdict["reasons"], list)
        if verdict["category"] == "none":
            assert verdict["severity"] is None and verdict["subtype"] is None
    assert out[0]["category"] == "safeguarding" and out[0]["subtype"] == "self_harm"
    assert out[0]["severity"] == "high" and out[0]["reasons"]
    assert out[1]["category"] == "none"
    assert out[2]["category"] == "disparaging"


def test_bad_lines_get_an_error_line_and_the_rest_continue():
    code, out = classify(["not json", json.dumps({"id": 7}), json.dumps({"id": 8, "text": "hello"})])
    assert code == 1
    assert out[0] == {"id": None, "error": "line 1: not JSON: Expecting value: line 1 column 1 (char 0)"}
    assert out[1]["id"] == 7 and "text" in out[1]["error"]
    assert out[2]["id"] == 8 and out[2]["category"] == "none"


def test_school_context_from_config(tmp_path):
    config = write_config(tmp_path, [])
    code, out = classify([
        json.dumps({"id": 1, "text": "Stabbing on Harrowgate High Street last night, police say",
                    "school": "harrowgate"}),
        json.dumps({"id": 2, "text": "Harrowgate High is a joke, the head is a liar",
                    "school": "harrowgate"}),
    ], "--config", str(config))
    assert code == 0
    assert out[0]["category"] == "none" and out[0]["reasons"][0].startswith("not about Harrowgate High School")
    assert out[1]["category"] == "disparaging"


def test_eval_command_reaches_the_evaluator(tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in [
        {"text": "i cant do this anymore, took pills tonight", "label": "safeguarding",
         "subtype": "self_harm", "severity": "high"},
        {"text": "Great chess result for the school today", "label": "none", "hard_negative": True},
    ]) + "\n")
    done = subprocess.run([sys.executable, "-m", "monitor", "eval", "--data", str(data),
                           "--classifier", "rules", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["safeguarding_recall"] == 1.0
