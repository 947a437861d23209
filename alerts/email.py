"""Building the RFC 5322 message for an OutgoingMessage."""
from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate

from alerts.base import OutgoingMessage


def build_email(message: OutgoingMessage) -> EmailMessage:
    """Multipart text + HTML email with the outbox's stable Message-ID."""
    mail = EmailMessage()
    mail["From"] = message.sender
    mail["To"] = message.recipient
    mail["Subject"] = message.subject
    mail["Message-ID"] = message.message_id
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Auto-Response-Suppress"] = "All"
    for name, value in message.headers.items():
        mail[name] = value
    mail.set_content(message.text, cte="quoted-printable")
    if message.html:
        mail.add_alternative(message.html, subtype="html", cte="quoted-printable")
    return mail
