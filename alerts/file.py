"""The file channel: each message written as an .eml file in a folder (no SMTP needed)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from alerts.base import Channel, DeliveryError, OutgoingMessage
from alerts.email import build_email


class FileChannelConfig(BaseModel):
    """Where the .eml files go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Path("outbox")


class FileChannel(Channel):
    """Writes RFC 822 files atomically; a re-send of one message overwrites its file."""

    Config = FileChannelConfig
    config: FileChannelConfig

    def send(self, message: OutgoingMessage) -> None:
        """Write ``message`` to ``<directory>/<recipient>-<id>.eml``."""
        digest = hashlib.sha256(message.message_id.encode()).hexdigest()[:16]
        mailbox = "".join(c if c.isalnum() or c in "._-" else "_" for c in message.recipient)
        target = self.config.directory / f"{mailbox}-{digest}.eml"
        temporary = target.with_suffix(".tmp")
        try:
            self.config.directory.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(bytes(build_email(message)))
            os.replace(temporary, target)
        except OSError as exc:
            raise DeliveryError(f"cannot write {target}: {exc.strerror or exc}") from None
