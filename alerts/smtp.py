"""The SMTP channel: STARTTLS or implicit TLS, authentication, timeouts."""
from __future__ import annotations

import smtplib
import socket
import ssl
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alerts.base import Channel, DeliveryError, OutgoingMessage
from alerts.email import build_email
from monitor.secrets import EnvSecret


class SmtpConfig(BaseModel):
    """An SMTP relay; the password only from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: EnvSecret | None = None
    timeout: float = Field(30.0, gt=0, le=300)
    # A CA bundle for a relay with a private CA; the system trust store otherwise.
    ca_file: str | None = None

    @model_validator(mode="after")
    def _password_with_username(self) -> SmtpConfig:
        if self.username and self.password is None:
            raise ValueError('username given without password = {env = "..."}')
        return self


class SmtpChannel(Channel):
    """Sends each message on a fresh connection, so a dead relay never wedges a thread."""

    Config = SmtpConfig
    config: SmtpConfig

    def send(self, message: OutgoingMessage) -> None:
        """Deliver one message or raise DeliveryError."""
        cfg = self.config
        mail = build_email(message)
        try:
            with self._connect() as smtp:
                if cfg.username and cfg.password is not None:
                    smtp.login(cfg.username, cfg.password.get_secret_value())
                refused = smtp.send_message(mail, to_addrs=[message.recipient])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()))
            raise DeliveryError(f"{cfg.host} refused {message.recipient}: {code} "
                                f"{_text(reason)}", permanent=True) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{cfg.host} refused the login: {exc.smtp_code}") from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{cfg.host} said {exc.smtp_code} {_text(exc.smtp_error)}",
                                permanent=500 <= exc.smtp_code < 600) from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"cannot deliver via {cfg.host}:{cfg.port}: "
                                f"{type(exc).__name__}: {exc}") from None
        if refused:
            raise DeliveryError(f"{cfg.host} refused {', '.join(refused)}", permanent=True)

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        context = ssl.create_default_context(cafile=cfg.ca_file)
        local_name = socket.getfqdn()
        if cfg.security == "ssl":
            return smtplib.SMTP_SSL(cfg.host, cfg.port, local_hostname=local_name,
                                    timeout=cfg.timeout, context=context)
        smtp = smtplib.SMTP(cfg.host, cfg.port, local_hostname=local_name, timeout=cfg.timeout)
        try:
            if cfg.security == "starttls":
                smtp.starttls(context=context)
        except BaseException:
            smtp.close()
            raise
        return smtp


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
