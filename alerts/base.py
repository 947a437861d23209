"""The channel contract: deliver one rendered message to one recipient."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class OutgoingMessage(BaseModel):
    """A rendered message for one recipient, as stored in the outbox."""

    model_config = ConfigDict(frozen=True)

    recipient: str
    sender: str
    subject: str
    text: str
    html: str | None = None
    message_id: str
    # Extra headers such as In-Reply-To / References that thread updates together.
    headers: dict[str, str] = Field(default_factory=dict)
    # Inline images for the HTML part: Content-ID (without <>) -> PNG, shown as cid:<id>.
    images: dict[str, bytes] = Field(default_factory=dict)


class DeliveryError(Exception):
    """The message was not delivered; the outbox keeps it and tries again later."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        # A permanent failure (recipient rejected) still stays in the outbox, but is
        # retried slowly and reported to the admin rather than hammered.
        self.permanent = permanent


class Channel(ABC):
    """Delivers messages; raises DeliveryError and nothing else on failure."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def send(self, message: OutgoingMessage) -> None:
        """Deliver ``message`` or raise DeliveryError."""

    def close(self) -> None:
        """Release connections; called when the daemon stops."""
