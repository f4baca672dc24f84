"""Topic names under a prefix: how a shadow worker (a replay) reads and writes only topics of its own.

A shadow is the live worker's code with its own app id (so its own consumer groups, changelog
topics and RocksDB directory) and `topic_prefix` set: every declared topic it binds is
`<prefix><name>`, and its producer renames every declared topic it is handed on the way out. The
agents keep naming `locations`, `push`, ...; one place renames.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from infra.producer import AsyncProducer, DeliveryGroup
from schemas.topics import ALL_TOPICS, TopicSpec

__all__ = ["DECLARED", "PrefixedProducer", "prefixed", "prefixed_specs"]

DECLARED = frozenset(spec.name for spec in ALL_TOPICS)


def prefixed(prefix: str, topic: str) -> str:
    """`topic` as a worker with `prefix` names it: declared topics get the prefix, others (changelogs) stay."""
    return prefix + topic if topic in DECLARED else topic


def prefixed_specs(prefix: str, specs: Iterable[TopicSpec] = ALL_TOPICS) -> list[TopicSpec]:
    """The declarations of a shadow's topics: the same partitions and config under prefixed names."""
    return [replace(spec, name=prefix + spec.name) for spec in specs]


class PrefixedProducer(AsyncProducer):
    """An AsyncProducer that sends every declared topic under `prefix` (a shadow's outputs)."""

    def __init__(self, bootstrap: str, prefix: str, **kwargs: Any) -> None:
        super().__init__(bootstrap, **kwargs)
        self.prefix = prefix

    def send(
        self, group: DeliveryGroup, topic: str, value: bytes | None, *, key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        super().send(group, prefixed(self.prefix, topic), value, key=key, partition=partition)
