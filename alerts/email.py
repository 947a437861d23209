"""Building the RFC 5322 message for an OutgoingMessage."""
from __future__ import annotations

from email.message import EmailMessage, MIMEPart
from email.utils import formatdate

from alerts.base import OutgoingMessage


def build_email(message: OutgoingMessage) -> EmailMessage:
    """Multipart text + HTML email (HTML with its inline images) with a stable Message-ID."""
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
        if message.images:
            _attach_inline(mail.get_body(("html",)), message.images)
    return mail


def _attach_inline(html_part: MIMEPart, images: dict[str, bytes]) -> None:
    # add_related turns the text/html part into multipart/related with the HTML first,
    # which is where Gmail and Outlook look for cid: images of that alternative.
    for cid, data in images.items():
        html_part.add_related(data, maintype="image", subtype="png", cid=f"<{cid}>",
                              disposition="inline", filename=f"{cid}.png")
    html_part.set_param("type", "text/html")  # RFC 2387: the root part's type
