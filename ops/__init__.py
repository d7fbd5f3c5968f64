"""Operations: what an operator sees and does, for every face (the ``erynoa saga|dlq``
commands, the admin API, the web console).

``ops.assess`` is pure (what a saga waits for, whether it is stuck, what a replay would do);
``ops.sagas`` and ``ops.dlq`` query and act over PostgreSQL and Kafka connections they are
given; ``ops.invariants`` checks the system against the design's invariants. Nothing here
prints or reads settings: the faces wire it.
"""
