"""Infrastructure: settings, the local Kafka broker, topic creation, the CLI."""
