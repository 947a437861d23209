"""The ``schoolwatch evidence export|verify`` commands, as plain functions the CLI calls."""
from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine
from sqlmodel import Session

from monitor.config import Settings
from monitor.evidence.pack import EvidenceError, export_pack, manifest_sha256
from monitor.evidence.settings import EvidenceSettings
from monitor.evidence.verify import verify_pack
from monitor.store import Incident, init_db, make_engine


def default_actor() -> str:
    """The login name of whoever runs the command."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def export_command(settings: Settings, incident_id: int, out: Path, actor: str | None = None,
                   evidence: EvidenceSettings | None = None, stdout: TextIO | None = None,
                   stderr: TextIO | None = None) -> int:
    """Write the pack and print its manifest hash; 0 on success, 1 when it cannot."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    engine = make_engine(settings.store.url)
    init_db(engine)
    school_name = _school_name(settings, incident_id, engine)
    try:
        path = export_pack(engine, incident_id, out, actor or default_actor(), settings=evidence,
                           school_name=school_name)
    except EvidenceError as exc:
        print(f"error: {exc}", file=stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror or exc}", file=stderr)
        return 1
    print(f"wrote {path}", file=stdout)
    print(f"manifest sha256 {manifest_sha256(path)} (recorded in the audit log)", file=stdout)
    return 0


def verify_command(path: Path, expected_manifest_sha256: str | None = None,
                   stdout: TextIO | None = None) -> int:
    """Print one line per problem (or one saying the pack is intact); 0 intact, 1 not."""
    stdout = stdout or sys.stdout
    report = verify_pack(path, expected_manifest_sha256)
    for line in report.lines():
        print(line, file=stdout)
    return 0 if report.ok else 1


def _school_name(settings: Settings, incident_id: int, engine: Engine) -> str | None:
    with Session(engine) as session:
        incident = session.get(Incident, incident_id)
    if incident is None:
        return None
    return next((s.name for s in settings.schools if s.id == incident.school_id), None)
