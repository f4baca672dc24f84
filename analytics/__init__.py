"""Example analytics consumers: plain confluent-kafka and fastavro, nothing of livetrack but its .avsc files."""
