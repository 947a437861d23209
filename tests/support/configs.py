"""Writing real config files for tests."""
from __future__ import annotations

from pathlib import Path

from tests.support.database import database_url

SCHOOL = """
[[schools]]
id = "harrowgate"
name = "Harrowgate High School"
aliases = ["Harrowgate High", "HHS"]
handles = ["@HarrowgateHigh"]
exclusions = ["Harrowgate High Street"]

[schools.recipients]
headteacher = ["head@harrowgate.example.sch.uk"]
dsl = ["dsl@harrowgate.example.sch.uk", "deputy.dsl@harrowgate.example.sch.uk"]
"""


def write_config(directory: Path, sources: list[dict], smtp: dict | None = None,
                 extra: str = "", admin: bool = True, classifier: str | None = "rules") -> Path:
    """A config: the Harrowgate school, the given sources, SMTP or a file outbox, a fresh store.

    Most tests are about the pipeline around the classifier, so they name the rules: each
    daemon subprocess is spared the model load. ``classifier=None`` keeps the default.
    """
    lines = [f'[store]\nurl = "{database_url(directory)}"\n',
             '[email]\nsender = "Schoolwatch <alerts@harrowgate.example.sch.uk>"',
             f'outbox_dir = "{directory / "outbox"}"']
    if smtp:
        lines.append("[email.smtp]")
        lines += [f"{key} = {_toml(value)}" for key, value in smtp.items()]
    if admin:
        lines.append('\n[admin]\nrecipients = ["it@harrowgate.example.sch.uk"]')
    lines.append(SCHOOL)
    for source in sources:
        lines.append("[[sources]]")
        options = source.pop("options", {})
        lines += [f"{key} = {_toml(value)}" for key, value in source.items()]
        lines.append("options = {" + ", ".join(f"{k} = {_toml(v)}" for k, v in options.items()) + "}")
    if classifier:
        lines.append(f'[classifier]\nname = "{classifier}"')
    lines.append(extra)
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
