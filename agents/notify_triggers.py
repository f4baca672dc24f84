"""Which pipeline events notify whom (pure): the small trigger steps of the rides, orders and offers agents.

Each agent adds the request to the transaction that decided the event, under an idempotency key
named after the event (a replay re-sends the same key: one notification):

- rides (RideEvent): ACCEPTED, STARTED, COMPLETED, NO_DRIVERS to the rider; the assigned driver's ETA
  to the pickup under `arriving_s` (a `ride.driver` push) once, as "driver arriving";
- orders (an Order's new status): CONFIRMED, COURIER_ASSIGNED, OUT_FOR_DELIVERY, ARRIVING, DELIVERED,
  FAILED to the customer;
- offers (an `offer` push to `driver:{id}`): the driver, critical, expiring with the offer.
"""
from __future__ import annotations

import json
from typing import Any

from agents.commands import notification_request
from schemas import typed

__all__ = ["ARRIVING_S", "arriving_notification", "offer_notification", "order_notification", "ride_notification"]

ARRIVING_S = 120.0  # "driver arriving" once the pickup ETA is under this
RIDE_EVENTS: dict[str, tuple[str, str]] = {
    "ACCEPTED": ("ride.assigned", "A driver is on the way"),
    "STARTED": ("ride.started", "Your trip has started"),
    "COMPLETED": ("ride.completed", "You have arrived"),
    "NO_DRIVERS": ("ride.no_drivers", "No driver found"),
}
ORDER_STATUSES: dict[str, tuple[str, str]] = {
    "CONFIRMED": ("order.confirmed", "Order confirmed"),
    "COURIER_ASSIGNED": ("order.courier_assigned", "A courier has your order"),
    "OUT_FOR_DELIVERY": ("order.out_for_delivery", "Out for delivery"),
    "ARRIVING": ("order.arriving", "Your courier is arriving"),
    "DELIVERED": ("order.delivered", "Delivered"),
    "FAILED": ("order.failed", "Delivery failed"),
}


def _data(**kw: Any) -> str:
    return json.dumps(kw, separators=(",", ":"))


def ride_notification(e: typed.RideEvent) -> typed.NotificationRequest | None:
    known = RIDE_EVENTS.get(e["event"])
    if known is None or e["order_id"]:  # a delivery trip's customer hears of it through the order
        return None
    category, title = known
    body = e["reason"] or (f"Pickup in about {round(e['pickup_eta_s'] / 60)} min" if e["pickup_eta_s"] else "")
    return notification_request(
        "REQUEST", e["rider_id"], e["ts"], idempotency_key=f"ride:{e['ride_id']}:{e['event']}", category=category,
        title=title, body=body, data=_data(ride_id=e["ride_id"], driver_id=e["driver_id"]), source="rides")


def arriving_notification(ride: typed.Ride, eta_s: float | None, now_ms: int) -> typed.NotificationRequest | None:
    if ride["state"] != "ACCEPTED" or eta_s is None or eta_s > ARRIVING_S or ride["order_id"]:
        return None
    return notification_request(
        "REQUEST", ride["rider_id"], now_ms, idempotency_key=f"ride:{ride['ride_id']}:arriving",
        category="ride.driver_arriving", title="Your driver is arriving", body=f"About {max(1, round(eta_s / 60))} min",
        data=_data(ride_id=ride["ride_id"], driver_id=ride["driver_id"], eta_s=eta_s), source="rides")


def order_notification(before: typed.Order | None, after: typed.Order) -> typed.NotificationRequest | None:
    known = ORDER_STATUSES.get(after["status"])
    if known is None or (before is not None and before["status"] == after["status"]
                         and before["courier_id"] == after["courier_id"]):
        return None
    category, title = known
    step = after["timeline"][-1] if after["timeline"] else None
    courier = after["courier_id"] if after["status"] == "COURIER_ASSIGNED" else ""
    return notification_request(
        "REQUEST", after["customer_id"], after["status_ts"],
        idempotency_key=f"order:{after['order_id']}:{after['status']}:{courier or ''}", category=category, title=title,
        body=(step["reason"] if step and step["reason"] else "") or "", source="orders",
        data=_data(order_id=after["order_id"], status=after["status"], link=f"/track/{after['order_id']}"))


def offer_notification(push: typed.PushMessage) -> typed.NotificationRequest | None:
    if push["type"] != "offer" or not push["channel"].startswith("driver:"):
        return None
    data = json.loads(push["data"])
    return notification_request(
        "REQUEST", push["channel"][len("driver:"):], push["event_ts"],
        idempotency_key=f"offer:{data['ride_id']}:{data.get('attempt', 0)}", category="driver.offer",
        priority="critical", expires_at=int(data.get("expires_at") or push["sent_ts"] + push["ttl_ms"]),
        title="New ride offer", body=f"Fare {data.get('fare_estimate')}", source="offers",
        data=_data(ride_id=data["ride_id"], attempt=data.get("attempt", 0)))
