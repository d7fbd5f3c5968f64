"""The REST API: the seed's endpoint table under ``/api/v1``, on FastAPI.

Routes are thin: they validate, authorize, read the read model (plain SELECTs) or publish one
event and answer ``202``. ``api.app.create_app`` wires the runtime (Postgres pool, Kafka
publisher, Redis, JWKS cache); ``api.server.serve`` runs it with uvicorn; ``erynoa api``
starts it from the command line.
"""
