"""The HTTP + Socket.IO gateway: ingest to Kafka, push from Kafka to subscribers."""
