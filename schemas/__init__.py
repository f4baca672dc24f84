"""Records, their Avro schemas and the topic declarations: the single source of truth."""
