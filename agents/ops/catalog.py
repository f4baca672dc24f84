"""What the operator tools know of livetrack's tables and topics: names, changelogs, value records."""
from __future__ import annotations

from typing import Type

import faust

from agents.ops.errors import OpsError
from schemas import records
from schemas.topics import ALL_TOPICS, TopicSpec
from tables import (
    cell_to_activity, cell_to_drivers, cell_to_features, driver_to_outbox, driver_to_state, order_to_state,
    partition_to_watermark, ride_to_state,
)

__all__ = ["TABLES", "changelog", "spec_of", "table_record"]

TABLES: dict[str, Type[faust.Record]] = {
    driver_to_state.NAME: records.DriverState, driver_to_outbox.NAME: records.DriverOutbox,
    cell_to_drivers.NAME: records.CellDrivers, ride_to_state.NAME: records.Ride,
    cell_to_activity.NAME: records.CellPane, partition_to_watermark.NAME: records.Watermark,
    cell_to_features.NAME: records.CellLatest, order_to_state.NAME: records.Order,
}


def changelog(app_id: str, table: str) -> str:
    """The changelog topic Faust names for `table` of app `app_id`."""
    return f"{app_id}-{table}-changelog"


def table_record(table: str) -> Type[faust.Record]:
    try:
        return TABLES[table]
    except KeyError:
        raise OpsError(f"no table {table!r} (tables: {', '.join(TABLES)})") from None


def spec_of(topic: str) -> TopicSpec:
    """The declaration of a topic named without its prefix."""
    for spec in ALL_TOPICS:
        if spec.name == topic:
            return spec
    raise OpsError(f"no declared topic {topic!r} (topics: {', '.join(s.name for s in ALL_TOPICS)})")
