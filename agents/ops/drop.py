"""Drop a shadow (its topics, changelogs, consumer groups, RocksDB directory and manifest), or promote
it: the live app id pointed at the shadow's state.

Promote is a procedure with one step done here: the workers are stopped (refused while the live
group has members), the shadow's consumer groups are given offsets on the live topics (the inputs
at the replay's stop offsets, so the promoted worker goes on from where the shadow stopped; the
agents' own topics at their ends, since what the old app sent there the shadow decided itself),
and the command prints how to start the workers under the shadow's app id.
"""
from __future__ import annotations

import shutil
import time
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from agents.ops import shadow as shadows
from agents.ops.errors import OpsError
from agents.ops.kafka import consumer, watermarks
from agents.ops.replay import consumed
from agents.ops.shadow import Shadow
from infra.settings import Settings
from schemas.topics import ALL_TOPICS

__all__ = ["drop", "promote"]


def _shadow_topics(admin: AdminClient, shadow: Shadow) -> list[str]:
    names = admin.list_topics(timeout=10).topics
    return sorted(t for t in names if t.startswith(shadow.prefix) or t.startswith(f"{shadow.app_id}-"))


def _groups(shadow: Shadow) -> list[str]:
    return [group for group, _, _ in consumed(shadow.app_id, shadow.prefix)] + [f"{shadow.app_id}-replay"]


def drop(settings: Settings, name: str) -> dict[str, Any]:
    """Remove everything of shadow `name`; what was removed."""
    shadow = shadows.load(settings, name)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    topics = _shadow_topics(admin, shadow)
    for _, future in (admin.delete_topics(topics, operation_timeout=30).items() if topics else ()):
        future.result()
    groups = _groups(shadow)
    for _, future in admin.delete_consumer_groups(groups, request_timeout=10).items():
        try:
            future.result()
        except Exception:  # a group that never committed does not exist
            pass
    state = settings.state_dir / "worker" / shadow.app_id
    shutil.rmtree(state, ignore_errors=True)
    (settings.state_dir / "shadows" / f"{name}.json").unlink(missing_ok=True)
    return {"dropped": name, "topics": topics, "groups": groups, "state_dir": str(state)}


def _live_members(admin: AdminClient, group: str) -> int:
    try:
        [described] = [f.result() for f in admin.describe_consumer_groups([group], request_timeout=10).values()]
    except Exception:  # no such group: nobody in it
        return 0
    return len(described.members)


def promote(settings: Settings, name: str) -> dict[str, Any]:
    """Give the shadow's groups their offsets on the live topics; how to start under its app id."""
    shadow = shadows.load(settings, name)
    if shadow.status != "done":
        raise OpsError(f"shadow {name} has not finished its replay")
    if settings.topic_prefix:
        raise OpsError("promote from the live settings (LIVETRACK_TOPIC_PREFIX empty)")
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    # A stopped worker is a static member: it stays in the group until its session times out.
    deadline = time.monotonic() + settings.worker_session_timeout_s + 10
    while busy := {g: n for g, _, _ in consumed(settings.app_id, "") if (n := _live_members(admin, g))}:
        if time.monotonic() > deadline:
            raise OpsError(f"stop the live workers first: {busy} member(s) still in the live groups")
        time.sleep(1.0)
    declared = {s.name for s in ALL_TOPICS}
    c = consumer(settings.bootstrap)
    offsets: dict[str, dict[int, int]] = {}
    try:
        for group, _, topics in consumed(shadow.app_id, ""):
            positions = []
            for topic in (t for t in topics if t in declared):
                stops = shadow.ranges.get(topic)
                marks = watermarks(c, topic)
                at = {p: int(stops[str(p)][1]) if stops else high for p, (_, high) in marks.items()}
                offsets[topic] = at
                positions += [TopicPartition(topic, p, o) for p, o in at.items()]
            committer = consumer(settings.bootstrap, group)
            try:
                committer.commit(offsets=positions, asynchronous=False)
            finally:
                committer.close()
    finally:
        c.close()
    return {"promoted": name, "app_id": shadow.app_id, "offsets": offsets,
            "start": f"LIVETRACK_APP_ID={shadow.app_id} faust -A agents.worker worker -l info"}
