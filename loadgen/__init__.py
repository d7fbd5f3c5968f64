"""Synthetic booking traffic for load tests: ``erynoa loadgen`` and the library ``bench/`` uses.

A run sets up its own customers, providers and services (fresh ids, never shared), sends
``BookingRequested`` through the REST API or straight into Kafka at a target rate, plays the
providers and customers the profile asks for (accept, reject, never answer, cancel, finish a
3-D Secure challenge), waits for every saga to settle in the read model, and then measures:
completed sagas/s, latency end to end and per step, outcomes against the profile, errors,
consumer lag, and the invariants. See ``loadgen.engine`` for the flow and
``loadgen/profiles/default.yaml`` for the knobs.
"""
