"""The local stack without Docker: Kafka (KRaft), PostgreSQL, Redis and stripe-mock.

``erynoa stack up|down|status|logs`` (see :mod:`cli.stack`) runs each service as a
background process of its own, keeps its pid file and log under ``Settings.state_dir`` and
checks its health. :mod:`erynoa.stack.manager` holds the logic, one module per service holds
what is special about it.
"""
