"""The payment agent and its gateways.

``agent.PaymentAdapter`` authorizes, captures, voids and refunds through a
``gateway.PaymentGateway``:
``sandbox.SandboxGateway`` (the default; deterministic, keeps a ledger in PostgreSQL) or
``stripe_gateway.StripeGateway`` (Stripe's API, or stripe-mock). ``factory.gateway_factory``
picks one from the settings. Run the agent with ``erynoa worker payment``.
"""
