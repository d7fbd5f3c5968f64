"""The fingerprint a replay must present: equal for the same plan, different when anything the
operator saw in the dry run changed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ops.dead_letters import DeadLetter, Failure
from ops.replay import PlannedReplay, PreviousReplay, StalePlan, check_plan, plan_id

WHEN = datetime(2026, 1, 28, 10, 0, tzinfo=UTC)


def message(offset: int) -> DeadLetter:
    return DeadLetter(
        topic="payment.dlq",
        partition=0,
        offset=offset,
        timestamp=WHEN,
        raw_key=b"k",
        value=b"v",
        headers=(),
        failure=Failure.from_headers(()),
        event=None,
        undecodable="not avro",
    )


def test_the_same_plan_has_the_same_id() -> None:
    plan = [PlannedReplay(message(1), None, None), PlannedReplay(message(2), "empty", None)]
    again = [PlannedReplay(message(1), None, None), PlannedReplay(message(2), "empty", None)]
    assert plan_id(plan) == plan_id(again)
    assert len(plan_id(plan)) == 64


def test_a_message_replayed_meanwhile_changes_the_id() -> None:
    before = [PlannedReplay(message(1), None, None)]
    previous = PreviousReplay("r1", "someone", "replayed", WHEN, 1, None)
    after = [PlannedReplay(message(1), "already replayed", previous)]
    assert plan_id(before) != plan_id(after)


def test_another_message_or_one_more_changes_the_id() -> None:
    one = [PlannedReplay(message(1), None, None)]
    assert plan_id(one) != plan_id([PlannedReplay(message(2), None, None)])
    assert plan_id(one) != plan_id([*one, PlannedReplay(message(2), None, None)])
    assert plan_id(one) != plan_id([replace(one[0], skip="undecodable")])


def test_a_replay_naming_another_plan_is_refused_with_the_current_one() -> None:
    plan = [PlannedReplay(message(1), None, None)]
    assert check_plan(plan, None) == plan_id(plan)
    assert check_plan(plan, plan_id(plan)) == plan_id(plan)
    with pytest.raises(StalePlan) as refused:
        check_plan(plan, plan_id([PlannedReplay(message(2), None, None)]))
    assert refused.value.current == plan_id(plan)
