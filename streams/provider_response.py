"""The provider-response agent: a deadline per booking, and the provider's answer judged against it.

Run: ``erynoa worker provider-response``. Consumes ``bookings``, ``payments`` and
``provider-answers`` (the API publishes ``ProviderAnswerSubmitted`` there); emits
``ProviderResponseRequested``, ``ProviderAccepted``, ``ProviderRejected`` and
``ProviderTimedOut`` on ``provider-responses``.

The deadline (the service's ``response_deadline_seconds`` after the payment was authorized) is
a row in ``provider_deadlines``, so it survives restarts and rebalances. Every worker of the
group runs ``sweep_deadlines`` once a second: it picks due rows and re-evaluates each booking
through the same rules with the current time (``Runtime.tick``); the per-booking lock makes
sure one worker does it, and the state makes a second evaluation a no-op. An answer counts if
it was *given* before the deadline (the rules compare the answer's ``occurred_at``), so an
answer that arrives after the timeout changes nothing.
"""

from __future__ import annotations

import logging

from erynoa import saga
from erynoa.events import (
    BookingEvent,
    ProviderAccepted,
    ProviderRejected,
    ProviderResponseRequested,
    ProviderTimedOut,
)
from streams.runtime import BaseAdapter, Context, Runtime

log = logging.getLogger("streams.provider_response")

SWEEP_BATCH = 100

_ROW_STATUS = {"accepted": "accepted", "rejected": "rejected", "timed_out": "timed_out"}


class ProviderResponseAdapter(BaseAdapter):
    agent: saga.Agent = "provider-response"

    async def execute(self, action: saga.Action, ctx: Context) -> list[BookingEvent]:
        s = ctx.state
        match action:
            case saga.StartProviderDeadline(deadline_at=deadline_at):
                await ctx.conn.execute(
                    """INSERT INTO provider_deadlines
                           (booking_id, provider_id, deadline_at, status, correlation_id)
                       VALUES ($1, $2, $3, 'pending', $4)
                       ON CONFLICT (booking_id) DO NOTHING""",
                    s.booking_id,
                    s.provider_id,
                    deadline_at,
                    s.correlation_id,
                )
                # The row and the state commit together, so an existing row has this deadline.
                stored = await ctx.conn.fetchval(
                    "SELECT deadline_at FROM provider_deadlines WHERE booking_id = $1", s.booking_id
                )
                return [
                    ctx.emit(
                        ProviderResponseRequested,
                        "requested",
                        provider_id=s.provider_id,
                        deadline_at=stored,
                    )
                ]
            case saga.AcceptForProvider():
                return [ctx.emit(ProviderAccepted, "accepted", provider_id=s.provider_id)]
            case saga.RejectForProvider():
                # From the state: the answer may have come before this step could decide.
                reason = s.provider_answer_reason
                return [
                    ctx.emit(ProviderRejected, "rejected", provider_id=s.provider_id, reason=reason)
                ]
            case saga.TimeOutProvider():
                assert (
                    s.provider_deadline_at is not None
                )  # the rules time out only a started deadline
                return [ctx.emit(ProviderTimedOut, "timed_out", deadline_at=s.provider_deadline_at)]
        raise TypeError(f"provider-response cannot {action!r}")

    async def settle(self, ctx: Context) -> None:
        """Close the deadline row once the wait is over, however it ended (a cancel included)."""
        s = ctx.state
        if s.provider_outcome is not None:
            status = _ROW_STATUS[s.provider_outcome]
        elif s.is_outcome:
            status = "cancelled"
        else:
            return
        await ctx.conn.execute(
            """UPDATE provider_deadlines SET status = $2, updated_at = now()
               WHERE booking_id = $1 AND status = 'pending'""",
            s.booking_id,
            status,
        )


async def sweep_deadlines(runtime: Runtime) -> int:
    """Evaluate every booking whose deadline passed; returns how many this worker handled."""
    now = runtime.clock()
    rows = await runtime.pool.fetch(
        """SELECT booking_id::text FROM provider_deadlines
           WHERE status = 'pending' AND deadline_at <= $1
           ORDER BY deadline_at LIMIT $2""",
        now,
        SWEEP_BATCH,
    )
    handled = 0
    for row in rows:
        if runtime.draining:
            break
        try:
            if await runtime.tick(row["booking_id"]):
                handled += 1
        except Exception:
            # One booking's trouble must not stop the others' timeouts; the row stays pending
            # and the next sweep tries again.
            log.exception(
                "deadline of booking %s", row["booking_id"], extra={"booking_id": row["booking_id"]}
            )
    return handled
