"""What ops judges a saga by: in flight (in Python and in SQL alike)."""

from __future__ import annotations

from erynoa.saga import OUTCOMES, Policy
from ops.sagas import in_flight_sql


def test_in_flight_means_no_outcome_yet_or_compensation_pending() -> None:
    sql = in_flight_sql(Policy(refund_policy="full"))
    not_in = sql.split("NOT IN (", 1)[1].split(")", 1)[0]
    assert {v.strip(" '") for v in not_in.split(",")} == {s.value for s in OUTCOMES}
    # A cancelled booking whose capture still needs refunding is in flight under a full refund
    # policy only.
    assert "b.payment = 'captured'" in sql
    assert "b.payment = 'captured'" not in in_flight_sql(Policy(refund_policy="none"))
