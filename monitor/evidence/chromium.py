"""Headless Chromium, where installed: page screenshots and PDF printing."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from monitor.evidence.settings import EvidenceSettings

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW_SIZE = "1280,2000"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The closed network refuses Google's hosts: these stop Chromium stalling on them.
QUIET_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)


class ChromiumError(Exception):
    """Chromium could not produce the file (missing, failed, or timed out)."""


def find_chromium(settings: EvidenceSettings) -> str | None:
    """The configured Chromium if it is executable, else the first browser found on PATH."""
    if settings.chromium:
        return shutil.which(settings.chromium)
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_reason(settings: EvidenceSettings) -> str:
    """Why there is no Chromium, in words for a note."""
    if settings.chromium:
        return f"chromium not found at {settings.chromium}"
    return "chromium not installed"


def screenshot(binary: str, url: str, timeout: float) -> bytes:
    """A PNG of ``url`` at 1280x2000, or ChromiumError."""
    with tempfile.TemporaryDirectory(prefix="schoolwatch-shot-", ignore_cleanup_errors=True) as work:
        out = Path(work) / "page.png"
        _run(binary, [f"--screenshot={out}", f"--window-size={WINDOW_SIZE}"], url, Path(work),
             timeout)
        data = _read(out, "screenshot")
    if not data.startswith(PNG_SIGNATURE):
        raise ChromiumError("chromium wrote a screenshot that is not a PNG")
    return data


def print_pdf(binary: str, html_file: Path, timeout: float) -> bytes:
    """``html_file`` printed to PDF, or ChromiumError."""
    with tempfile.TemporaryDirectory(prefix="schoolwatch-pdf-", ignore_cleanup_errors=True) as work:
        out = Path(work) / "report.pdf"
        _run(binary, ["--no-pdf-header-footer", f"--print-to-pdf={out}"],
             html_file.resolve().as_uri(), Path(work), timeout)
        data = _read(out, "PDF")
    if not data.startswith(b"%PDF-"):
        raise ChromiumError("chromium wrote a PDF that is not a PDF")
    return data


def _run(binary: str, args: list[str], url: str, work: Path, timeout: float) -> None:
    profile = work / "profile"
    command = [binary, *QUIET_FLAGS, f"--user-data-dir={profile}", *args, url]
    try:
        # Own process group, so a timeout can end Chromium's helper processes too.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ChromiumError(f"cannot start {binary}: {exc.strerror or exc}") from None
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise ChromiumError(f"chromium timed out after {timeout:g}s") from None
    if process.returncode != 0:
        _kill_group(process)
        raise ChromiumError(f"chromium exited with status {process.returncode}: "
                            f"{_last_line(stderr)}")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.communicate()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ChromiumError(f"chromium wrote no {what}") from None


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error output"
