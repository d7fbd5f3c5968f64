"""Pick the payment gateway the settings ask for (``ERYNOA_PAYMENT_GATEWAY``)."""

from __future__ import annotations

from erynoa.settings import Settings
from streams.payment.gateway import PaymentGateway


def gateway_factory(settings: Settings) -> PaymentGateway:
    if settings.payment_gateway == "stripe":
        from streams.payment.stripe_gateway import StripeGateway

        return StripeGateway(settings.stripe_api_key, settings.stripe_api_base)
    from streams.payment.sandbox import SandboxGateway

    return SandboxGateway(latency_ms=settings.sandbox_latency_ms)
