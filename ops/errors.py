"""What every face reports as the operator's mistake rather than the system's."""

import uuid


class BadInput(ValueError):
    """An operator's input that names nothing usable (an id, a topic, a time, a step); the
    message says what is wrong. The CLI exits 2 on it, the admin API answers 422."""


class InvalidBookingId(BadInput):
    """Booking ids are uuids; anything else cannot name a booking."""


def check_booking_id(booking_id: str) -> str:
    """The booking id in canonical form (lower-case uuid); ``InvalidBookingId`` otherwise."""
    try:
        return str(uuid.UUID(booking_id.strip()))
    except ValueError:
        raise InvalidBookingId(f"{booking_id!r} is not a booking id (a uuid)") from None
