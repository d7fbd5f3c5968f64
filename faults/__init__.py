"""The fault-injection harness: steady load through the API while one fault at a time breaks a
private copy of the whole system, then a check that every acknowledged request took effect.

    erynoa faults                     # every row (``make faults``)
    erynoa faults --quick             # PostgreSQL 15 s, one broker restart, kill -9 of one agent
    erynoa faults --only pg,agent-kill

The system under test runs on its own stack instance (ports shifted, state in
``.stack-faults/``), so stopping PostgreSQL or killing the broker never touches the default
stack. Results go to ``bench/results/faults-<date>.{json,md,png}``.

* ``faults.client``: the well-behaved client (retries, idempotency keys, what was acknowledged).
* ``faults.private``: the private stack and the system's processes on it.
* ``faults.injectors``: one class per fault.
* ``faults.matrix``: runs the rows and measures each.
* ``faults.report``: verdicts, the JSON, the markdown table and the PNG.
"""
