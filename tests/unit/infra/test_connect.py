"""infra.connect: the Connect worker's and the Debezium connector's configs (pure)."""
from __future__ import annotations

from pathlib import Path

from infra.connect import QUEUE_TABLE, connector_config, worker_properties
from infra.settings import Settings
from schemas.topics import LEGACY_ORDER_EVENTS

DSN = "host=127.0.0.1 port=25432 user=livetrack password=pw dbname=postgres"


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_connector_reads_the_queue_table_only_through_pgoutput() -> None:
    config = connector_config(Settings(postgres_slot="bridge_slot", postgres_publication="bridge_pub"), DSN)
    assert config["plugin.name"] == "pgoutput"
    assert (config["table.include.list"], config["publication.autocreate.mode"]) == (QUEUE_TABLE, "filtered")
    assert (config["slot.name"], config["publication.name"]) == ("bridge_slot", "bridge_pub")
    assert (config["database.hostname"], config["database.port"], config["database.user"],
            config["database.password"], config["database.dbname"]) == ("127.0.0.1", "25432", "livetrack", "pw", "postgres")


def test_outbox_router_gives_key_value_and_headers_of_the_interface() -> None:
    config = connector_config(Settings(), DSN)
    assert config["transforms"] == "outbox"
    assert config["transforms.outbox.type"] == "io.debezium.transforms.outbox.EventRouter"
    assert config["transforms.outbox.route.topic.replacement"] == LEGACY_ORDER_EVENTS.name == "legacy-order-events"
    assert config["transforms.outbox.table.field.event.key"] == "aggregateid"
    assert config["transforms.outbox.table.field.event.payload"] == "payload"
    assert config["transforms.outbox.table.expand.json.payload"] == "false"
    assert config["transforms.outbox.table.fields.additional.placement"] == "id:header:row_id,type:header:event_type"
    assert config["key.converter"] == config["value.converter"] == "org.apache.kafka.connect.storage.StringConverter"


def test_connector_retries_a_lost_database() -> None:
    config = connector_config(Settings(connect_retry_wait_ms=750), DSN)
    assert (config["errors.max.retries"], config["retriable.restart.connector.wait.ms"]) == ("-1", "750")


def test_worker_is_one_distributed_worker_on_loopback() -> None:
    props = _properties(worker_properties(
        Settings(kafka_port=24000, connect_rest_port=24083, connect_group_id="lt", replication_factor=3,
                 connect_offset_flush_ms=250), Path("/cache/plugins")))
    assert props["bootstrap.servers"] == "127.0.0.1:24000"
    assert props["listeners"] == "http://127.0.0.1:24083"
    assert (props["group.id"], props["config.storage.topic"], props["offset.storage.topic"],
            props["status.storage.topic"]) == ("lt", "lt-configs", "lt-offsets", "lt-status")
    assert props["config.storage.replication.factor"] == props["offset.storage.replication.factor"] == "3"
    assert props["offset.flush.interval.ms"] == "250"
    assert props["plugin.path"] == "/cache/plugins"
    assert props["scheduled.rebalance.max.delay.ms"] == "0"
