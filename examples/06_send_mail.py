"""Sending mail through a blocking SDK: smtplib, on the ``"blocking"`` lane.

smtplib (like most vendor SDKs) is sync: each send waits for the server while holding
its thread. On the blocking lane, many sends overlap; ``limit`` keeps within what the
mail server accepts at once, and ``return_exceptions=True`` reports rejected
recipients without losing the rest. The server is a local aiosmtpd.

Run: python examples/06_send_mail.py
"""

from __future__ import annotations

import smtplib
import socket
import time
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tasklanes import call, run_all_sync


class Mailbox:
    """An aiosmtpd handler that keeps what it receives and refuses one domain."""

    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.endswith("@bounce.invalid"):
            return "550 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def send_welcome(host: str, port: int, to: str) -> str:
    """Plain smtplib: one connection per message, with its own socket timeout."""
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = to
    message["Subject"] = "Welcome!"
    message.set_content(f"Hello {to.split('@')[0]}, thanks for signing up.")
    with smtplib.SMTP(host, port, timeout=5) as smtp:
        smtp.send_message(message)
    return to


def main() -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        recipients = [f"user{i}@example.com" for i in range(30)]
        recipients[7] = "nobody@bounce.invalid"
        start = time.perf_counter()
        outcomes = run_all_sync(
            [call(send_welcome, "127.0.0.1", port, to) for to in recipients],
            kind="blocking",
            limit=8,
            timeout=10,
            return_exceptions=True,
        )
        took = time.perf_counter() - start
    finally:
        controller.stop()

    sent = [o for o in outcomes if isinstance(o, str)]
    refused = {to: o for to, o in zip(recipients, outcomes, strict=True)
               if isinstance(o, BaseException)}
    print(f"{len(sent)} mails sent in {took:.2f} s, {len(refused)} refused:")
    for to, error in refused.items():
        print(f"  {to}: {type(error).__name__}")
    assert len(sent) == 29
    assert isinstance(refused["nobody@bounce.invalid"], smtplib.SMTPRecipientsRefused)
    assert len(mailbox.messages) == 29


if __name__ == "__main__":
    main()
