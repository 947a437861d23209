"""Teams, Slack, SMS gateways and the rest through Apprise: a short notice, never the full post."""
from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from alerts.base import Channel, DeliveryError, OutgoingMessage
from monitor.secrets import EnvSecret

log = logging.getLogger(__name__)

# Chat and SMS previews travel beyond the school's mail system: send the headline only.
MAX_BODY = 600


class AppriseConfig(BaseModel):
    """Apprise service URLs (they carry tokens, so they come from the environment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[EnvSecret] = Field(min_length=1)


class AppriseChannel(Channel):
    """Notifies every configured service; DeliveryError when any of them refuses."""

    Config = AppriseConfig
    config: AppriseConfig

    def send(self, message: OutgoingMessage) -> None:
        """Send the subject and the first lines of the text."""
        import apprise

        notifier = apprise.Apprise()
        for url in self.config.urls:
            if not notifier.add(url.get_secret_value()):
                raise DeliveryError("an Apprise URL was not understood (check the variable that "
                                    "holds it; the URL itself is not logged)", permanent=True)
        body = message.text if len(message.text) <= MAX_BODY else message.text[:MAX_BODY] + " …"
        try:
            delivered = notifier.notify(title=message.subject, body=body,
                                        body_format=apprise.NotifyFormat.TEXT)
        except Exception as exc:  # Apprise plugins can raise; a channel must not
            raise DeliveryError(f"apprise failed: {type(exc).__name__}") from None
        if not delivered:
            raise DeliveryError(f"apprise: a service refused the notification for {message.recipient}")
