"""The notification agent: tells the provider a request waits, and the customer how it ended.

Run: ``erynoa worker notification``. Consumes ``bookings``, ``reservations``, ``payments`` and
``provider-responses``; emits ``NotificationSent`` / ``NotificationFailed`` on ``notifications``.

Channels, per recipient (``users``): e-mail over SMTP (``ERYNOA_SMTP_HOST``/``_PORT``,
``ERYNOA_MAIL_FROM``) when the user has an address, and a signed webhook when the user
registered ``webhook_url`` (sent only where ``erynoa.outbound`` allows, checked again at every
send: ``ERYNOA_OUTBOUND_ALLOW``/``_PORTS``). The webhook's body is JSON;
``X-Erynoa-Signature: t=<unix>,v1=<hex>`` is HMAC-SHA256 over ``"<t>.<body>"`` with
``ERYNOA_WEBHOOK_SIGNING_SECRET`` (``verify_signature`` is the receiver's check).

Delivered once in effect: the notification id is derived from booking and template. Before
sending, ``notification_deliveries`` is checked for (id, channel); after sending, the row is
written on its own connection (it must survive a rollback of the handler's transaction: the
mail is out). Recording *before* sending would lose a notification when the process dies in
between; this order can at worst send twice after such a crash, and then the duplicate carries
the same ``Message-ID`` (e-mail) or ``Idempotency-Key`` (webhook) for the receiver to drop.

A temporary failure (connection refused, SMTP 4xx, webhook 5xx/429/timeout) goes through the
retry topics; on the last attempt, and at once for a permanent failure (SMTP 5xx, webhook 4xx,
no address at all), the agent records ``NotificationFailed`` so the saga never waits on an
inbox. Synthetic traffic (Kafka header ``erynoa-synthetic: 1``) is recorded under channel
``synthetic`` and sent nowhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import smtplib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

import asyncpg
import httpx

from erynoa import saga
from erynoa.events import (
    BookingEvent,
    NotificationFailed,
    NotificationSent,
    derived_event_id,
    format_money,
)
from erynoa.outbound import OutboundPolicy, OutboundRefused, guarded_client
from erynoa.settings import Settings
from streams.failures import PermanentError, RetryableError, classify, describe
from streams.runtime import BaseAdapter, Context

log = logging.getLogger("streams.notification")

SIGNATURE_HEADER = "X-Erynoa-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SYNTHETIC_CHANNEL = "synthetic"
SIGNATURE_TOLERANCE_S = 300

Channel = Literal["email", "webhook"]
Role = Literal["provider", "customer"]

_SUBJECTS = {
    saga.PROVIDER_REQUEST: "New booking request waiting for your answer",
    saga.customer_template(saga.Status.CONFIRMED): "Your booking is confirmed",
    saga.customer_template(saga.Status.REJECTED): "Your booking could not be made",
    saga.customer_template(saga.Status.EXPIRED): "Your booking request expired",
    saga.customer_template(saga.Status.CANCELLED): "Your booking was cancelled",
    saga.customer_template(saga.Status.FAILED): "Your booking failed",
}


class DeliveryFailed(PermanentError):
    """The receiver refused for good (SMTP 5xx, webhook 4xx): retrying cannot help."""


class DeliveryUnavailable(RetryableError):
    """The receiver is unreachable or asked us to come back later."""


def notification_id(booking_id: str, template: str) -> str:
    return derived_event_id(booking_id, f"notification:{template}")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Erynoa-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    now: float | None = None,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> bool:
    """A receiver's check: the signature matches and is not older than ``tolerance_s``."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class Notice:
    """One notification, whatever the channel."""

    notification_id: str
    booking_id: str
    template: str
    recipient_role: Role
    recipient_id: str
    subject: str
    body: str
    payload: dict[str, object]


def compose(state: saga.BookingState, template: str, role: Role) -> Notice:
    nid = notification_id(state.booking_id, template)
    subject = _SUBJECTS.get(template, f"Booking {state.status.value}")
    slot = f"{state.slot_start.isoformat()} to {state.slot_end.isoformat()}"
    price = format_money(state.price)
    lines = [
        subject + ".",
        "",
        f"Booking: {state.booking_id}",
        f"Service: {state.service_id}",
        f"Slot:    {slot}",
        f"Price:   {price}",
        f"Status:  {state.status.value}",
    ]
    if state.failure_reason and role == "customer":
        lines.append(f"Reason:  {state.failure_reason}")
    payload: dict[str, object] = {
        "id": nid,
        "type": template,
        "booking_id": state.booking_id,
        "status": state.status.value,
        "recipient_role": role,
        "service_id": state.service_id,
        "slot_start": state.slot_start.isoformat(),
        "slot_end": state.slot_end.isoformat(),
        "amount_minor": state.price.amount_minor,
        "currency": state.price.currency,
        "failure_reason": state.failure_reason,
    }
    recipient = state.provider_id if role == "provider" else state.customer_id
    return Notice(
        nid, state.booking_id, template, role, recipient, subject, "\n".join(lines), payload
    )


class SmtpSender:
    """Sends one e-mail through the stdlib ``smtplib`` in a worker thread."""

    def __init__(self, host: str, port: int, mail_from: str, timeout_s: float = 15.0) -> None:
        self.host = host
        self.port = port
        self.mail_from = mail_from
        self.timeout_s = timeout_s

    def message(self, notice: Notice, address: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.mail_from
        msg["To"] = address
        msg["Subject"] = notice.subject
        # The notification id as Message-ID: a duplicate after a crash is recognisable as one.
        msg["Message-ID"] = f"<{notice.notification_id}@erynoa>"
        msg["X-Erynoa-Booking-Id"] = notice.booking_id
        msg["X-Erynoa-Template"] = notice.template
        msg.set_content(notice.body)
        return msg

    async def send(self, notice: Notice, address: str) -> None:
        msg = self.message(notice, address)
        try:
            await asyncio.to_thread(self._send, msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if codes and all(code >= 500 for code in codes):
                raise DeliveryFailed(f"SMTP refused {address}: {exc.recipients}") from exc
            raise DeliveryUnavailable(f"SMTP deferred {address}: {exc.recipients}") from exc
        except smtplib.SMTPException as exc:
            if classify(exc) == "permanent":
                raise DeliveryFailed(f"SMTP: {describe(exc)}") from exc
            raise DeliveryUnavailable(f"SMTP: {describe(exc)}") from exc
        except OSError as exc:
            raise DeliveryUnavailable(f"SMTP {self.host}:{self.port}: {describe(exc)}") from exc

    def _send(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            smtp.send_message(msg)

    async def probe(self) -> str | None:
        """Whether the relay takes connections and answers NOOP; None when it does."""
        try:
            await asyncio.to_thread(self._noop)
        except (OSError, smtplib.SMTPException) as exc:
            return f"smtp {self.host}:{self.port}: {describe(exc)}"
        return None

    def _noop(self) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=5.0) as smtp:
            code, _ = smtp.noop()
            if code != 250:
                raise smtplib.SMTPResponseException(code, b"NOOP refused")


class WebhookSender:
    """POSTs a signed JSON notification to a user's registered URL, through the outbound guard
    (``erynoa.outbound``): only to addresses ``policy`` allows, to the address it checked, and
    never following a redirect. ``transport`` replaces the network under the guard."""

    def __init__(
        self,
        secret: str,
        timeout_s: float = 10.0,
        *,
        policy: OutboundPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secret = secret
        self.timeout_s = timeout_s
        self.policy = policy if policy is not None else OutboundPolicy()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = guarded_client(self.policy, timeout_s=self.timeout_s, inner=self._transport)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def request(self, notice: Notice, now: int | None = None) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(notice.payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(now if now is not None else time.time())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
            IDEMPOTENCY_HEADER: notice.notification_id,
            "User-Agent": "erynoa-notifications/1",
        }
        return body, headers

    async def send(self, notice: Notice, url: str) -> None:
        if self._client is None:
            raise RuntimeError("WebhookSender not started")
        body, headers = self.request(notice)
        # The reasons raised here end up in NotificationFailed: what happened, in our words;
        # the remote side's own error text only goes to the log.
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except OutboundRefused as exc:  # nothing was sent
            raise DeliveryFailed(f"webhook refused: {exc.reason}") from exc
        except httpx.InvalidURL as exc:  # e.g. an octal IPv4 form: nothing was sent
            raise DeliveryFailed("webhook refused: not a valid URL") from exc
        except httpx.TransportError as exc:  # connect, read, timeouts, no address
            log.info("webhook %s unreachable: %s", url, describe(exc))
            raise DeliveryUnavailable(f"webhook unreachable ({type(exc).__name__})") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in (408, 425, 429) or status >= 500:
            raise DeliveryUnavailable(f"webhook answered {status}")
        raise DeliveryFailed(f"webhook answered {status}")


class NotificationAdapter(BaseAdapter):
    agent: saga.Agent = "notification"
    waits_on_outside = True  # SMTP, customers' webhooks

    def __init__(self, smtp: SmtpSender, webhooks: WebhookSender) -> None:
        self.smtp = smtp
        self.webhooks = webhooks

    @classmethod
    def from_settings(cls, settings: Settings) -> NotificationAdapter:
        return cls(
            SmtpSender(settings.smtp_host, settings.smtp_port, settings.mail_from),
            WebhookSender(
                settings.webhook_signing_secret, policy=OutboundPolicy.from_settings(settings)
            ),
        )

    async def start(self, pool: asyncpg.Pool) -> None:
        await self.webhooks.start()

    async def stop(self) -> None:
        await self.webhooks.close()

    async def redrive(self, ctx: Context) -> list[BookingEvent]:
        """A dead-lettered notification replayed: deliver again what was given up on.

        What was delivered is skipped (``notification_deliveries``); a delivery that fails
        again raises, so the replayed message goes back to the dead-letter topic instead of
        being recorded as given up a second time.
        """
        ctx.final_attempt = False
        events: list[BookingEvent] = []
        for template in sorted(ctx.state.notified):
            role: Role = "provider" if template == saga.PROVIDER_REQUEST else "customer"
            events += await self._notify(ctx, compose(ctx.state, template, role))
        return events

    async def probe(self) -> str | None:
        # The relay is ours and every e-mail goes through it: down, it is an outage. A
        # customer's webhook endpoint is theirs: down, it is that message's failure.
        return await self.smtp.probe()

    async def execute(self, action: saga.Action, ctx: Context) -> list[BookingEvent]:
        match action:
            case saga.NotifyProvider(template=template):
                return await self._notify(ctx, compose(ctx.state, template, "provider"))
            case saga.NotifyCustomer(template=template):
                return await self._notify(ctx, compose(ctx.state, template, "customer"))
        raise TypeError(f"notification cannot {action!r}")

    async def _notify(self, ctx: Context, notice: Notice) -> list[BookingEvent]:
        if ctx.synthetic:
            await _record(ctx.pool, notice, SYNTHETIC_CHANNEL, notice.recipient_id)
            return [self._sent(ctx, notice, "email")]
        user = await ctx.conn.fetchrow(
            "SELECT email, webhook_url FROM users WHERE id = $1", notice.recipient_id
        )
        email = user["email"] if user is not None else None
        url = user["webhook_url"] if user is not None else None
        if not email and not url:
            return [self._failed(ctx, notice, "email", "no address")]
        events: list[BookingEvent] = []
        if email:
            events.append(
                await self._deliver(
                    ctx, notice, "email", email, lambda: self.smtp.send(notice, email)
                )
            )
        if url:
            events.append(
                await self._deliver(
                    ctx, notice, "webhook", url, lambda: self.webhooks.send(notice, url)
                )
            )
        return events

    async def _deliver(
        self,
        ctx: Context,
        notice: Notice,
        channel: Channel,
        recipient: str,
        send: Callable[[], Awaitable[None]],
    ) -> BookingEvent:
        if not await _delivered(ctx.pool, notice.notification_id, channel):
            try:
                await send()
            except DeliveryFailed as exc:
                return self._failed(ctx, notice, channel, describe(exc))
            except DeliveryUnavailable as exc:
                if not ctx.final_attempt:
                    raise
                if channel == "email" and await self.smtp.probe() is not None:
                    # Our relay is down: an outage, which the runtime waits out in place; only
                    # a recipient's own refusal is given up on.
                    raise
                # The last retry failed too: record the failure so the saga goes on; the
                # runtime also dead-letters the message for operators.
                ctx.gave_up.append(exc)
                return self._failed(ctx, notice, channel, f"gave up: {describe(exc)}")
            await _record(ctx.pool, notice, channel, recipient)
        return self._sent(ctx, notice, channel)

    def _sent(self, ctx: Context, notice: Notice, channel: Channel) -> BookingEvent:
        return ctx.emit(
            NotificationSent,
            f"sent:{notice.template}:{channel}",
            **_delivery_fields(notice, channel),
        )

    def _failed(self, ctx: Context, notice: Notice, channel: Channel, reason: str) -> BookingEvent:
        log.warning(
            "%s to %s via %s failed: %s",
            notice.template,
            notice.recipient_role,
            channel,
            reason,
            extra={"booking_id": notice.booking_id, "correlation_id": ctx.state.correlation_id},
        )
        return ctx.emit(
            NotificationFailed,
            f"failed:{notice.template}:{channel}",
            reason=reason,
            **_delivery_fields(notice, channel),
        )


def _delivery_fields(notice: Notice, channel: Channel) -> dict[str, str]:
    """What ``NotificationSent`` and ``NotificationFailed`` both say about the delivery."""
    return {
        "notification_id": notice.notification_id,
        "recipient_role": notice.recipient_role,
        "channel": channel,
        "template": notice.template,
    }


async def _delivered(pool: asyncpg.Pool, nid: str, channel: str) -> bool:
    found = await pool.fetchval(
        "SELECT 1 FROM notification_deliveries WHERE notification_id = $1 AND channel = $2",
        nid,
        channel,
    )
    return found is not None


async def _record(pool: asyncpg.Pool, notice: Notice, channel: str, recipient: str) -> None:
    await pool.execute(
        """INSERT INTO notification_deliveries
               (notification_id, channel, booking_id, recipient, template)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
        notice.notification_id,
        channel,
        notice.booking_id,
        recipient,
        notice.template,
    )
