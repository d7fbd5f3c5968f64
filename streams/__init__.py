"""The booking saga's agents on Faust: reservation, payment, notification, provider_response.

Each agent is its own worker process (``erynoa worker <agent>``, see ``streams.cli``) in its own
consumer group; ``streams.app`` wires one, ``streams.runtime`` is the handler loop they share
(decode, decide with ``erynoa.saga``, act, emit), ``streams.failures`` routes what failed to
retry and dead-letter topics. The agent modules hold only what is specific to their step.
"""
