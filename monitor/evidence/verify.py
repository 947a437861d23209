"""Re-checking a pack: every listed item present and unchanged, nothing unlisted added."""
from __future__ import annotations

import json
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from monitor.evidence.canonical import sha256_hex
from monitor.evidence.pack import MANIFEST


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pack, naming the item."""

    kind: str  # tampered, missing, unlisted, unreadable, manifest
    path: str
    detail: str

    def line(self) -> str:
        """'tampered: items/...: detail'."""
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass
class VerifyReport:
    """The outcome of verifying one pack."""

    path: Path
    manifest_sha256: str | None = None
    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every item is intact and nothing was added or removed."""
        return self.manifest_sha256 is not None and not self.problems

    def names(self) -> set[str]:
        """The paths named by problems."""
        return {p.path for p in self.problems}

    def lines(self) -> list[str]:
        """One line per problem, or one line saying the pack is intact."""
        if self.ok:
            return [f"intact: {self.path}: {len(self.checked)} items match their SHA-256; "
                    f"manifest sha256 {self.manifest_sha256}"]
        return [p.line() for p in self.problems]


def verify_pack(path: str | Path, expected_manifest_sha256: str | None = None) -> VerifyReport:
    """Re-hash every item the manifest lists and report what is missing, added or altered."""
    report = VerifyReport(Path(path))
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.problems.append(Problem("unreadable", str(path), f"not a readable zip file: {exc}"))
        return report
    with archive:
        names = archive.namelist()
        for name, count in Counter(names).items():
            if count > 1:
                report.problems.append(Problem("tampered", name, f"appears {count} times in the zip"))
        manifest = _manifest(archive, report, expected_manifest_sha256)
        if manifest is None:
            return report
        listed = _check_items(archive, manifest, report)
        for name in sorted(set(names) - listed - {MANIFEST}):
            report.problems.append(Problem("unlisted", name, "in the zip but not in the manifest"))
    return report


def _manifest(archive: zipfile.ZipFile, report: VerifyReport,
              expected: str | None) -> dict | None:
    try:
        data = archive.read(MANIFEST)
    except KeyError:
        report.problems.append(Problem("missing", MANIFEST, "the pack has no manifest"))
        return None
    except (zipfile.BadZipFile, zlib.error, OSError) as exc:
        report.problems.append(Problem("unreadable", MANIFEST, str(exc)))
        return None
    report.manifest_sha256 = sha256_hex(data)
    if expected and report.manifest_sha256 != expected.lower():
        report.problems.append(Problem("tampered", MANIFEST,
                                       f"sha256 {report.manifest_sha256}, expected {expected}"))
    try:
        manifest = json.loads(data)
        items = manifest["items"]
        if not isinstance(items, list) or not all(
                isinstance(i, dict) and isinstance(i.get("path"), str) and i.get("sha256")
                for i in items):
            raise ValueError("items must each have a path and a sha256")
    except (ValueError, KeyError, TypeError) as exc:
        report.problems.append(Problem("tampered", MANIFEST, f"not a valid manifest: {exc}"))
        return None
    return manifest


def _check_items(archive: zipfile.ZipFile, manifest: dict, report: VerifyReport) -> set[str]:
    listed: set[str] = set()
    for item in manifest["items"]:
        name = item["path"]
        if name in listed:
            report.problems.append(Problem("tampered", name, "listed twice in the manifest"))
            continue
        listed.add(name)
        try:
            data = archive.read(name)
        except KeyError:
            report.problems.append(Problem("missing", name, "listed in the manifest, not in the zip"))
            continue
        except (zipfile.BadZipFile, zlib.error, OSError) as exc:
            # A flipped byte in the compressed stream fails the zip's own CRC check first.
            report.problems.append(Problem("tampered", name, f"unreadable: {exc}"))
            continue
        actual = sha256_hex(data)
        if actual != str(item["sha256"]).lower():
            report.problems.append(Problem("tampered", name,
                                           f"sha256 {actual}, manifest says {item['sha256']}"))
        elif item.get("size") is not None and item["size"] != len(data):
            report.problems.append(Problem("tampered", name,
                                           f"{len(data)} bytes, manifest says {item['size']}"))
        else:
            report.checked.append(name)
    return listed
