"""Checks of dispatch's guarantees from what is on Kafka: the rides log, the drivers' pushes, their state."""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

from agents.trips import ACTIVE, FINAL, IllegalTransition, next_state

__all__ = ["audit_rides", "audit_offers", "audit_reservations"]


def audit_rides(events: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each ride's last event, and every way the log fails to explain a ride: versions not 1..n,
    a version logged twice as different events, an illegal transition, a ride neither final nor
    active, a ride accepted twice, a driver assigned two rides at once."""
    by_ride: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    problems: list[str] = []
    for e in events:
        held = by_ride[e["ride_id"]].get(e["version"])
        if held is None:
            by_ride[e["ride_id"]][e["version"]] = e
        elif (held["event"], held["driver_id"]) != (e["event"], e["driver_id"]):
            problems.append(f"{e['ride_id']} v{e['version']}: {held['event']} and {e['event']} logged")
    last: dict[str, dict[str, Any]] = {}
    assignments: list[tuple[str, int, int, str]] = []  # driver, accepted ts, released ts, ride
    for ride_id, versions in by_ride.items():
        ordered = [versions[v] for v in sorted(versions)]
        if [e["version"] for e in ordered] != list(range(1, len(ordered) + 1)):
            problems.append(f"{ride_id}: versions {sorted(versions)} are not 1..n")
        state: str | None = None
        accepted: dict[str, Any] | None = None
        for e in ordered:
            try:
                state = next_state(state, e["event"])
            except IllegalTransition as exc:
                problems.append(f"{ride_id} v{e['version']}: {exc}")
                break
            if state != e["state"]:
                problems.append(f"{ride_id} v{e['version']}: logged state {e['state']}, the log gives {state}")
            if e["event"] == "ACCEPTED":
                if accepted is not None:
                    problems.append(f"{ride_id}: accepted twice")
                accepted = e
            elif accepted is not None and state in FINAL:
                assignments.append((accepted["driver_id"], accepted["ts"], e["ts"], ride_id))
                accepted = None
        if accepted is not None:
            assignments.append((accepted["driver_id"], accepted["ts"], 2**62, ride_id))
        if ordered[-1]["state"] not in FINAL | ACTIVE:
            problems.append(f"{ride_id}: ends {ordered[-1]['state']}, neither final nor active")
        last[ride_id] = ordered[-1]
    by_driver: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for driver, start, end, ride in assignments:
        by_driver[driver].append((start, end, ride))
    for driver, spans in by_driver.items():
        spans.sort()
        for (s1, e1, r1), (s2, _e2, r2) in zip(spans, spans[1:]):
            if s2 < e1:
                problems.append(f"driver {driver} assigned {r1} and {r2} at once")
    return last, problems


def audit_offers(pushes: Iterable[dict[str, Any]]) -> tuple[int, list[str]]:
    """From `driver:{id}` pushes in seq order: how many offers, and every offer made while the
    driver still held another (not expired, revoked or turned into an assignment) or a ride."""
    per_channel: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for p in pushes:
        if p["channel"].startswith("driver:"):
            per_channel[p["channel"]].setdefault(p["seq"], p)  # a replayed seq is the same message
    offers, problems = 0, []
    for channel, by_seq in per_channel.items():
        holding: dict[str, Any] | None = None  # the open offer
        riding: str | None = None  # the assigned ride
        for seq in sorted(by_seq):
            p = by_seq[seq]
            data = json.loads(p["data"])
            kind = p["type"]
            if kind == "offer":
                offers += 1
                if holding is not None and holding["expires_at"] > p["sent_ts"]:
                    problems.append(f"{channel}: offer of {data['ride_id']} while holding {holding['ride_id']}")
                if riding is not None:
                    problems.append(f"{channel}: offer of {data['ride_id']} while assigned {riding}")
                holding = data
            elif kind == "offer.revoked" and holding is not None and holding["ride_id"] == data["ride_id"]:
                holding = None
            elif kind == "ride.assigned":
                holding, riding = None, data["ride_id"]
            elif kind == "ride.ended" and riding == data["ride_id"]:
                riding = None
    return offers, problems


def audit_reservations(states: Iterable[dict[str, Any]], last: dict[str, dict[str, Any]]) -> list[str]:
    """Drivers' final states: no reservation left, and assignments exactly the active rides' drivers."""
    problems = []
    assigned = {}
    for s in states:
        if s.get("ride_id") and s.get("reserved_until", 0) > 0:
            problems.append(f"driver {s['driver_id']} still reserved for {s['ride_id']}")
        elif s.get("ride_id"):
            assigned[s["driver_id"]] = s["ride_id"]
    active = {e["driver_id"]: ride for ride, e in last.items() if e["state"] in ACTIVE}
    if assigned != active:
        extra = {d: r for d, r in assigned.items() if active.get(d) != r}
        missing = {d: r for d, r in active.items() if assigned.get(d) != r}
        problems.append(f"drivers' assignments differ from active rides: extra {extra}, missing {missing}")
    return problems
