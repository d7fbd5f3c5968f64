"""Erynoa's booking backbone: the code shared by the API, the saga agents and the consumers.

Small on purpose: settings, the event envelope and codec, the topic catalog, the Postgres pool,
and the saga's pure rules, plus the local stack that runs the services. It imports no other
package of ours (``make lint`` holds it to that). Each runtime wires itself (``api.app``,
``streams.app``, ``consumers.materializer``); nothing here connects at import.
"""

__version__ = "0.1.0"
