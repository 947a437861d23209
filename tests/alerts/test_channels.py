"""The smtp channel against a real aiosmtpd server; the file channel on a real folder."""
from __future__ import annotations

import email
import email.policy

import pytest
from pydantic import SecretStr

from alerts.base import DeliveryError, OutgoingMessage
from alerts.file import FileChannel, FileChannelConfig
from alerts.smtp import SmtpChannel, SmtpConfig

MESSAGE = OutgoingMessage(recipient="dsl@school.example.org", sender="Schoolwatch <sw@school.example.org>",
                          subject="[Schoolwatch] SAFEGUARDING (high) - Test - rss", text="plain ✓",
                          html="<p>html ✓</p>", message_id="<abc.schoolwatch@school.example.org>")


def smtp_channel(server, tmp_path, **changes) -> SmtpChannel:
    options = dict(host="127.0.0.1", port=server.port, username=server.username,
                   password=SecretStr(server.password), ca_file=server.ca_file(tmp_path), timeout=5)
    return SmtpChannel(SmtpConfig(**{**options, **changes}))


def test_starttls_and_auth_delivery(smtp_server, tmp_path):
    smtp_channel(smtp_server, tmp_path).send(MESSAGE)
    [received] = smtp_server.messages
    assert received.recipients == ["dsl@school.example.org"]
    mail = received.message
    assert mail["Message-ID"] == MESSAGE.message_id
    assert mail.get_body(("plain",)).get_content().strip() == "plain ✓"
    assert mail.get_body(("html",)).get_content().strip() == "<p>html ✓</p>"


def test_wrong_password_is_a_delivery_error(smtp_server, tmp_path):
    # aiosmtpd answers 535 to PLAIN, then stalls smtplib's LOGIN retry: either way, no crash.
    with pytest.raises(DeliveryError, match="refused the login|cannot deliver"):
        smtp_channel(smtp_server, tmp_path, password=SecretStr("wrong"), timeout=2).send(MESSAGE)
    assert smtp_server.messages == []


def test_untrusted_certificate_is_refused(smtp_server, tmp_path):
    with pytest.raises(DeliveryError, match="SSL|certificate"):
        smtp_channel(smtp_server, tmp_path, ca_file=None).send(MESSAGE)


def test_rejected_recipient_is_permanent(smtp_server, tmp_path):
    smtp_server.mailbox.reject.add(MESSAGE.recipient)
    with pytest.raises(DeliveryError) as caught:
        smtp_channel(smtp_server, tmp_path).send(MESSAGE)
    assert caught.value.permanent and "550" in str(caught.value)


def test_server_down_is_a_delivery_error(smtp_server, tmp_path):
    channel = smtp_channel(smtp_server, tmp_path)
    smtp_server.stop()
    with pytest.raises(DeliveryError, match="cannot deliver"):
        channel.send(MESSAGE)


def test_file_channel_writes_a_parseable_eml(tmp_path):
    FileChannel(FileChannelConfig(directory=tmp_path / "out")).send(MESSAGE)
    [written] = (tmp_path / "out").glob("*.eml")
    mail = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert mail["To"] == "dsl@school.example.org"
    assert mail.get_body(("plain",)).get_content().strip() == "plain ✓"
    FileChannel(FileChannelConfig(directory=tmp_path / "out")).send(MESSAGE)
    assert len(list((tmp_path / "out").glob("*.eml"))) == 1  # a re-send overwrites


def test_file_channel_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DeliveryError, match="cannot write"):
        FileChannel(FileChannelConfig(directory=blocker / "out")).send(MESSAGE)
