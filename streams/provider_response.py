"""The provider-response agent: a deadline per booking, and the provider's answer judged against it.

Run: ``erynoa worker provider-response``. Consumes ``bookings``, ``payments`` and
``provider-answers`` (the API publishes ``ProviderAnswerSubmitted`` there); emits
``ProviderResponseRequested``, ``ProviderAccepted``, ``ProviderRejected`` and
``ProviderTimedOut`` on ``provider-responses``.

The deadline (the service's ``response_deadline_seconds`` after the payment was authorized) is
a row in ``provider_deadlines``, so it survives restarts and rebalances. Every worker of the
group runs ``sweep_deadlines`` once a second: it picks due rows and re-evaluates each booking
through the same rules with the current time (``AgentRuntime.tick``); the per-booking lock makes
sure one worker does it, and the state makes a second evaluation a no-op. An answer counts if
it was *given* before the deadline (the rules compare the answer's ``occurred_at``), so an
answer that arrives after the timeout changes nothing.

One clock judges both: PostgreSQL's. The deadline is ``now() + interval`` in the database, the
sweep picks rows due by the database's ``now()``, and the API stamps an answer with the
database's ``now()`` in ``provider_answers.submitted_at``. Before a timeout is emitted, the
answers the API acknowledged are consulted: the agent may lag behind the API (or have been
down across the deadline), so an answer taken in time may not have reached its state yet. Such
an answer is folded in straight from its row (``ProviderAccepted``/``ProviderRejected`` instead
of ``ProviderTimedOut``); its event, arriving later, finds the outcome decided and changes
nothing. Waiting for the event instead would leave the booking's fate to how far the consumer
lags, and a deadline that nothing times out while the event is parked somewhere.
"""

from __future__ import annotations

import logging
from datetime import datetime

from erynoa import saga
from erynoa.events import (
    BookingEvent,
    ProviderAccepted,
    ProviderRejected,
    ProviderResponseRequested,
    ProviderTimedOut,
)
from streams.runtime import AgentRuntime, BaseAdapter, Context

log = logging.getLogger("streams.provider_response")

SWEEP_BATCH = 100

_ROW_STATUS = {"accepted": "accepted", "rejected": "rejected", "timed_out": "timed_out"}


class ProviderResponseAdapter(BaseAdapter):
    agent: saga.Agent = "provider-response"

    async def execute(self, action: saga.Action, ctx: Context) -> list[BookingEvent]:
        s = ctx.state
        match action:
            case saga.StartProviderDeadline():
                # The database's clock, not this worker's: the API judges answers by it too.
                await ctx.conn.execute(
                    """INSERT INTO provider_deadlines
                           (booking_id, provider_id, deadline_at, status, correlation_id)
                       VALUES ($1, $2, now() + make_interval(secs => $3), 'pending', $4)
                       ON CONFLICT (booking_id) DO NOTHING""",
                    s.booking_id,
                    s.provider_id,
                    s.response_deadline_seconds,
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
                return await self._time_out(ctx, s.provider_deadline_at)
        raise TypeError(f"provider-response cannot {action!r}")

    async def _time_out(self, ctx: Context, deadline_at: datetime) -> list[BookingEvent]:
        """The timeout, unless the API took an answer in time that this state has not seen."""
        s = ctx.state
        # Locks the deadline row: an API transaction that locks it too (FOR SHARE) before
        # accepting an answer either commits before this reads the answers or sees the row
        # closed afterwards.
        row = await ctx.conn.fetchrow(
            """SELECT d.deadline_at, now() >= d.deadline_at AS due
               FROM provider_deadlines d WHERE d.booking_id = $1 FOR UPDATE""",
            s.booking_id,
        )
        answer = await ctx.conn.fetchrow(
            """SELECT decision, reason FROM provider_answers
               WHERE booking_id = $1 AND submitted_at < $2""",
            s.booking_id,
            row["deadline_at"] if row is not None else deadline_at,
        )
        if answer is not None:
            log.info(
                "answer %r was taken before the deadline; folded in from its row",
                answer["decision"],
                extra={"booking_id": s.booking_id, "correlation_id": s.correlation_id},
            )
            if answer["decision"] == "accept":
                return [ctx.emit(ProviderAccepted, "accepted", provider_id=s.provider_id)]
            return [
                ctx.emit(
                    ProviderRejected,
                    "rejected",
                    provider_id=s.provider_id,
                    reason=answer["reason"],
                )
            ]
        if row is not None and not row["due"]:
            # This worker's clock runs ahead of the database's: the deadline has not passed
            # yet by the clock that judges answers; the sweep comes back when it has.
            return []
        return [ctx.emit(ProviderTimedOut, "timed_out", deadline_at=deadline_at)]

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


async def sweep_deadlines(runtime: AgentRuntime) -> int:
    """Evaluate every booking whose deadline passed (by the database's clock, the one that set
    the deadline); returns how many this worker handled."""
    rows = await runtime.pool.fetch(
        """SELECT booking_id::text FROM provider_deadlines
           WHERE status = 'pending' AND deadline_at <= now()
           ORDER BY deadline_at LIMIT $1""",
        SWEEP_BATCH,
    )
    # A deadline whose booking fails stays pending, so the next sweep tries it again.
    return await runtime.tick_each((row["booking_id"] for row in rows), "deadline")
