"""Every face judges a saga with the policy its agents run with (``Policy.from_settings``):
the saga commands once dropped the payment-action timeout and judged 3-D Secure abandonment
by the default 30 minutes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cli import ops as ops_cli
from erynoa import events as ev
from erynoa import saga
from erynoa.settings import Settings
from ops import assess
from tests.builders import booking_requested, next_event


def settings() -> Settings:
    return Settings(refund_policy="none", payment_action_timeout_seconds=90)


def test_the_policy_from_settings_keeps_every_setting() -> None:
    assert saga.Policy.from_settings(settings()) == saga.Policy(
        refund_policy="none", payment_action_timeout=timedelta(seconds=90)
    )


def test_the_saga_commands_judge_with_the_agents_policy() -> None:
    assert ops_cli._policy(settings()) == saga.Policy.from_settings(settings())


def test_a_payment_action_past_the_deployments_timeout_is_abandoned_in_the_view() -> None:
    at = datetime(2026, 1, 28, 10, 0, tzinfo=UTC)
    requested = booking_requested(
        booking_id="3b9f1a52-8c0e-4d7b-9b1e-2f6a1c0d9e11", occurred_at=at, customer_id="c",
        service_id="3b9f1a52-8c0e-4d7b-9b1e-2f6a1c0d9e12", provider_id="p",
        slot_start=at + timedelta(days=3),
    )  # fmt: skip
    held = next_event(
        requested, ev.ReservationHeld, occurred_at=at + timedelta(seconds=1), hold_id="h"
    )
    action = next_event(
        requested, ev.PaymentActionRequired, cause=held, occurred_at=at + timedelta(seconds=2)
    )
    state = saga.fold_log([requested, held, action])
    assert state is not None
    assert state.status == saga.Status.PAYMENT_ACTION_REQUIRED
    later = at + timedelta(minutes=5)

    waiting = assess.where_it_waits(state, later, ops_cli._policy(settings()))

    assert [(w.who, type(w.action).__name__) for w in waiting] == [("payment", "AbandonPayment")]
