"""A real SMTP server in-process (aiosmtpd) with STARTTLS, that keeps what it receives."""
from __future__ import annotations

import email
import email.policy
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    """One accepted message."""

    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class Mailbox:
    """aiosmtpd handler that stores messages and can refuse recipients."""

    messages: list[Received] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.original_content or envelope.content,
                                          policy=email.policy.default)
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 requiring STARTTLS and AUTH LOGIN/PLAIN."""

    def __init__(self, username: str = "schoolwatch", password: str = "s3cret",
                 port: int = 0) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.tls)
        self.mailbox = Mailbox()
        self.username, self.password = username, password
        self.port = port or _free_port()
        self.controller: Controller | None = None

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == self.username
              and auth_data.password.decode() == self.password)
        # handled=False: aiosmtpd then answers 535 itself instead of leaving the client waiting.
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpServer:
        """Listen on ``self.port`` (the same port again after ``stop``)."""
        self.controller = Controller(
            self.mailbox, hostname="127.0.0.1", port=self.port, tls_context=self.tls,
            require_starttls=True, authenticator=self._authenticate, auth_required=True,
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        """Stop listening; received messages are kept."""
        if self.controller:
            self.controller.stop()
            self.controller = None

    def ca_file(self, directory) -> str:
        """Write the test CA's certificate to ``directory`` and return its path."""
        path = directory / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    @property
    def messages(self) -> list[Received]:
        """Messages accepted so far."""
        return self.mailbox.messages


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
