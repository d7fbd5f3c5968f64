"""What every face reports as the operator's mistake rather than the system's."""


class BadInput(ValueError):
    """An operator's input that names nothing usable (an id, a topic, a time, a step); the
    message says what is wrong. The CLI exits 2 on it, the admin API answers 422."""
