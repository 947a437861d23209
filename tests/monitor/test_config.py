"""check-config: valid files pass, every broken one names its TOML path."""
from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cli import demo_config_path, main

REPO = Path(__file__).resolve().parents[2]

VALID = """
[[schools]]
id = "harrowgate"
name = "Harrowgate High School"
[schools.recipients]
headteacher = ["head@harrowgate.example.sch.uk"]
dsl = ["dsl@harrowgate.example.sch.uk"]

[[sources]]
id = "news"
school = "harrowgate"
connector = "rss"
interval = "15m"
options = { url = "https://news.example.com/feed" }
"""


def check(tmp_path: Path, text: str, capsys) -> tuple[int, list[str]]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    code = main(["check-config", str(path)])
    return code, capsys.readouterr().err.strip().splitlines()


def test_example_config_is_valid(capsys):
    assert main(["check-config", str(REPO / "config.example.toml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_demo_config_is_valid():
    assert main(["check-config", str(demo_config_path())]) == 0


def test_minimal_config_is_valid(tmp_path, capsys):
    code, errors = check(tmp_path, VALID, capsys)
    assert (code, errors) == (0, [])


@pytest.mark.parametrize(("change", "expected"), [
    (("interval = \"15m\"", "intervall = \"15m\""),
     "config error: sources[0].intervall: unknown key (did you mean 'interval'?)"),
    (("interval = \"15m\"", "interval = \"5s\""), "config error: sources[0].interval: must be between 60s"),
    (("interval = \"15m\"", "interval = \"soon\""), "config error: sources[0].interval: 'soon' is not a duration"),
    (("connector = \"rss\"", "connector = \"myspace\""),
     "config error: sources[0].connector: unknown connector 'myspace'; known: bluesky, mastodon, reddit, rss, webpage, x, youtube"),
    (("school = \"harrowgate\"", "school = \"nowhere\""), "config error: sources[0].school: unknown school 'nowhere'"),
    (("url = \"https://news.example.com/feed\"", "url = \"ftp://news.example.com/feed\""),
     "config error: sources[0].options.url: url must start with http:// or https://"),
    (("options = { url", "options = { colour = 1, url"), "config error: sources[0].options.colour: unknown key"),
    (("dsl = [\"dsl@harrowgate.example.sch.uk\"]", "dsl = [\"not-an-address\"]"),
     "config error: schools[0].recipients: 'not-an-address' is not an email address"),
])
def test_broken_configs_name_the_path(tmp_path, capsys, change, expected):
    code, errors = check(tmp_path, VALID.replace(*change), capsys)
    assert code != 0
    assert any(line.startswith(expected) for line in errors), errors


def test_unknown_top_level_table(tmp_path, capsys):
    code, errors = check(tmp_path, VALID + "\n[emial]\nsender = \"x\"\n", capsys)
    assert code == 2
    assert errors[0].startswith("config error: emial: unknown key (did you mean 'email'?)")


def test_route_naming_a_role_no_school_defines(tmp_path, capsys):
    text = VALID + '\n[[routes]]\ncategory = "reputational"\nroles = ["governors"]\n'
    code, errors = check(tmp_path, text, capsys)
    assert code == 2
    assert errors == ["config error: routes[0].roles: no school defines recipients for role "
                      "'governors' (defined: dsl, headteacher)"]


def test_school_without_anyone_for_safeguarding(tmp_path, capsys):
    text = VALID.replace('dsl = ["dsl@harrowgate.example.sch.uk"]\n', "")
    text += '\n[[schools]]\nid = "other"\nname = "Other School"\n[schools.recipients]\ndsl = ["d@o.example.org"]\n'
    code, errors = check(tmp_path, text, capsys)
    assert code == 2
    assert "config error: schools[0].recipients: no one for safeguarding alerts (add dsl)" in errors


def test_missing_env_secret(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SW_TEST_SMTP_PASSWORD", raising=False)
    text = VALID.replace("[[schools]]", '[email.smtp]\nhost = "smtp.example.org"\nusername = "sw"\n'
                         'password = { env = "SW_TEST_SMTP_PASSWORD" }\n\n[[schools]]', 1)
    code, errors = check(tmp_path, text, capsys)
    assert code == 2
    assert errors == ["config error: email.smtp.password: environment variable "
                      "SW_TEST_SMTP_PASSWORD is not set"]
    monkeypatch.setenv("SW_TEST_SMTP_PASSWORD", "hunter2")
    code, errors = check(tmp_path, text, capsys)
    assert code == 0


def test_secret_written_in_the_file_is_refused(tmp_path, capsys):
    text = VALID.replace("[[schools]]", '[email.smtp]\nhost = "smtp.example.org"\nusername = "sw"\n'
                         'password = "hunter2"\n\n[[schools]]', 1)
    code, errors = check(tmp_path, text, capsys)
    assert code == 2
    assert errors[0].startswith("config error: email.smtp.password: secrets are read from the environment")
    assert "hunter2" not in "\n".join(errors)


def test_database_password_in_the_url_is_refused(tmp_path, capsys):
    text = VALID.replace("[[schools]]", '[store]\nurl = "postgresql+psycopg://sw:hunter2@db/sw"\n\n'
                         "[[schools]]", 1)
    code, errors = check(tmp_path, text, capsys)
    assert code == 2
    assert errors[0].startswith("config error: store.url: a password in the URL is a secret")
    assert "PGPASSWORD" in errors[0] and "hunter2" not in "\n".join(errors)


def test_several_errors_are_all_reported(tmp_path, capsys):
    text = VALID.replace('interval = "15m"', 'interval = "2s"\nenabeld = true')
    code, errors = check(tmp_path, text, capsys)
    assert code == 2
    assert len(errors) == 2


def test_not_toml(tmp_path, capsys):
    code, errors = check(tmp_path, "[[schools]\nid=", capsys)
    assert code == 2
    assert "not valid TOML" in errors[0]


def test_missing_file(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
