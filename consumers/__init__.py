"""Plain Kafka consumers that are not saga participants: the materializer and its rebuild."""
